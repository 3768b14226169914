#!/usr/bin/env python3
"""Bounded load on an OpenAI-compatible server (kvq serve, llama-server): C clients at
once, each sending R streaming chat requests one after the other (greedy, ignore_eos so
every reply has exactly --max-tokens tokens). Reports aggregate generated tokens/s and
time to first token (p50, p99) per concurrency, as a table and as JSON.

    python3 bench/serve_load.py --base-url http://127.0.0.1:8080/v1 --clients 1,4,16
"""
import argparse
import asyncio
import json
import statistics
import sys
import time

from openai import AsyncOpenAI


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


async def one_request(client, model, prompt, max_tokens, timeout):
    t0 = time.perf_counter()
    ttft, n_chunks, usage = None, 0, None
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True}, timeout=timeout)
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage.completion_tokens
        for ch in chunk.choices:
            if ch.delta.content:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                n_chunks += 1
    return ttft if ttft is not None else float("nan"), usage if usage is not None else n_chunks


async def run_level(args, n_clients):
    client = AsyncOpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)
    ttfts, tokens = [], 0

    async def worker(i):
        nonlocal tokens
        for r in range(args.requests):
            prompt = f"Client {i} request {r}: {args.prompt}"
            ttft, n = await one_request(client, args.model, prompt, args.max_tokens, args.timeout)
            ttfts.append(ttft)
            tokens += n

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(n_clients))), timeout=args.timeout)
    wall = time.perf_counter() - t0
    await client.close()
    return {"clients": n_clients, "requests": n_clients * args.requests, "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "ttft_p50_s": pct(ttfts, 50), "ttft_p99_s": pct(ttfts, 99),
            "ttft_median_s": statistics.median(ttfts)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--model", default="model")
    ap.add_argument("--label", default="server")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after the other")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt", default="Write a short story about a lighthouse keeper and a storm.")
    ap.add_argument("--timeout", type=float, default=600, help="seconds for one concurrency level")
    ap.add_argument("--json", help="append the results to this JSON-lines file")
    args = ap.parse_args()
    rows = []
    for c in [int(x) for x in args.clients.split(",")]:
        row = asyncio.run(run_level(args, c))
        row["label"] = args.label
        rows.append(row)
        print(f"{args.label:>14} clients {c:>3}: {row['tokens']:>5} tokens in {row['wall_s']:7.2f} s = "
              f"{row['tokens_per_s']:7.2f} tok/s, TTFT p50 {row['ttft_p50_s'] * 1e3:7.1f} ms, "
              f"p99 {row['ttft_p99_s'] * 1e3:7.1f} ms", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
