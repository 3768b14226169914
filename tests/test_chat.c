/* test_chat.c - chat templates: each family rendered on fixed messages against the text
 * its Hugging Face template produces (written out from the template's definition, the
 * file named beside each; the leading bos_token left to the tokenizer), detection from
 * template markers, the buffer protocol and the errors. */
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "test.h"

#define TINY "tests/data/tiny-llama.gguf"

static const kvq_chat_message CONVO[] = {
    {"system", "You are terse."},
    {"user", "Hi"},
    {"assistant", "Hello."},
    {"user", "Name a moon."},
};
#define N_CONVO (sizeof CONVO / sizeof CONVO[0])

typedef struct expected {
    const char *name;
    const char *text; /* with add_assistant = 1 */
} expected;

static const expected EXPECTED[] = {
    /* HuggingFaceTB/SmolLM2-135M-Instruct tokenizer_config.json: {{'<|im_start|>' +
     * message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}} per message,
     * {{ '<|im_start|>assistant\n' }} for the generation prompt */
    {"chatml", "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
               "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nName a moon.<|im_end|>\n"
               "<|im_start|>assistant\n"},
    /* meta-llama/Meta-Llama-3-8B-Instruct: '<|start_header_id|>' + message['role'] +
     * '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>', then
     * '<|start_header_id|>assistant<|end_header_id|>\n\n' */
    {"llama3", "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nName a moon.<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n"},
    /* meta-llama/Llama-2-7b-chat-hf: the system message as '<<SYS>>\n' + system +
     * '\n<</SYS>>\n\n' + first user content; user: bos_token + '[INST] ' +
     * content.strip() + ' [/INST]'; assistant: ' ' + content.strip() + ' ' + eos_token */
    {"llama2", "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] Name a moon. [/INST]"},
    /* mistralai/Mistral-7B-Instruct-v0.2: user '[INST] ' + content + ' [/INST]',
     * assistant content + eos_token; the system message prefixes the first user turn
     * with '\n\n' (as Mistral's v0.3 template does) */
    {"mistral", "[INST] You are terse.\n\nHi [/INST]Hello.</s>[INST] Name a moon. [/INST]"},
    /* google/gemma-3-270m-it: first_user_prefix = system + '\n\n'; '<start_of_turn>' +
     * role ('assistant' -> 'model') + '\n' + prefix + content | trim + '<end_of_turn>\n';
     * '<start_of_turn>model\n' */
    {"gemma", "<start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
              "<start_of_turn>user\nName a moon.<end_of_turn>\n<start_of_turn>model\n"},
    /* microsoft/Phi-3.5-mini-instruct: '<|system|>\n' / '<|user|>\n' / '<|assistant|>\n' +
     * content + '<|end|>\n'; '<|assistant|>\n' */
    {"phi3", "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello.<|end|>\n"
             "<|user|>\nName a moon.<|end|>\n<|assistant|>\n"},
};

TEST(chat_templates_render_each_family) {
    kvq_model *m;
    REQUIRE_OK(kvq_model_load(TINY, &m, NULL, 0));
    char buf[1024], msg[200];
    for (size_t i = 0; i < sizeof EXPECTED / sizeof EXPECTED[0]; i++) {
        size_t len = 0;
        kvq_status st = kvq_chat_format(m, EXPECTED[i].name, CONVO, N_CONVO, 1, buf, sizeof buf, &len, msg, sizeof msg);
        CHECKF(st == KVQ_OK, "%s: %s", EXPECTED[i].name, msg);
        CHECKF(!strcmp(buf, EXPECTED[i].text), "%s rendered:\n%s", EXPECTED[i].name, buf);
        CHECK(len == strlen(EXPECTED[i].text));
    }
    kvq_model_free(m);
}

TEST(chat_template_options) {
    kvq_model *m;
    REQUIRE_OK(kvq_model_load(TINY, &m, NULL, 0));
    char buf[512], msg[200];
    size_t len;
    /* without the generation prompt: the history alone */
    REQUIRE_OK(kvq_chat_format(m, "chatml", CONVO + 1, 1, 0, buf, sizeof buf, &len, NULL, 0));
    CHECK(!strcmp(buf, "<|im_start|>user\nHi<|im_end|>\n"));
    REQUIRE_OK(kvq_chat_format(m, "gemma", CONVO + 1, 1, 0, buf, sizeof buf, &len, NULL, 0));
    CHECK(!strcmp(buf, "<start_of_turn>user\nHi<end_of_turn>\n"));
    /* Gemma and Llama 3 trim content; ChatML keeps it as given */
    kvq_chat_message padded = {"user", "  Hi \n"};
    REQUIRE_OK(kvq_chat_format(m, "gemma", &padded, 1, 1, buf, sizeof buf, &len, NULL, 0));
    CHECK(!strcmp(buf, "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"));
    REQUIRE_OK(kvq_chat_format(m, "chatml", &padded, 1, 0, buf, sizeof buf, &len, NULL, 0));
    CHECK(!strcmp(buf, "<|im_start|>user\n  Hi \n<|im_end|>\n"));
    /* too small a buffer: CAPACITY with the length needed, then it fits exactly */
    size_t need = 0;
    char small[8];
    CHECK(kvq_chat_format(m, "llama3", CONVO, N_CONVO, 1, small, sizeof small, &need, msg, sizeof msg) ==
          KVQ_ERR_CAPACITY);
    CHECK(need == strlen(EXPECTED[1].text));
    CHECK(small[sizeof small - 1] == 0);
    CHECK(kvq_chat_format(m, "llama3", CONVO, N_CONVO, 1, NULL, 0, &need, NULL, 0) == KVQ_ERR_CAPACITY);
    char *exact = malloc(need + 1);
    REQUIRE(exact);
    CHECK_OK(kvq_chat_format(m, "llama3", CONVO, N_CONVO, 1, exact, need + 1, &len, NULL, 0));
    CHECK(len == need && !strcmp(exact, EXPECTED[1].text));
    free(exact);
    /* an unknown name, a model without a template, a message without content */
    msg[0] = 0;
    CHECK(kvq_chat_format(m, "vicuna", CONVO, N_CONVO, 1, buf, sizeof buf, &len, msg, sizeof msg) ==
          KVQ_ERR_UNSUPPORTED);
    CHECK(strstr(msg, "vicuna") != NULL);
    /* no template in the file: the vocabulary's <|im_start|> / <|im_end|> say ChatML */
    CHECK_OK(kvq_chat_format(m, NULL, CONVO, N_CONVO, 1, buf, sizeof buf, &len, msg, sizeof msg));
    CHECK(!strcmp(buf, EXPECTED[0].text));
    kvq_model *spm;
    REQUIRE_OK(kvq_model_load("tests/data/tiny-spm.gguf", &spm, NULL, 0));
    msg[0] = 0;
    CHECK(kvq_chat_format(spm, NULL, CONVO, N_CONVO, 1, buf, sizeof buf, &len, msg, sizeof msg) ==
          KVQ_ERR_UNSUPPORTED);
    CHECK(strstr(msg, "chat_template") != NULL);
    kvq_model_free(spm);
    kvq_chat_message bad = {"user", NULL};
    CHECK(kvq_chat_format(m, "chatml", &bad, 1, 1, buf, sizeof buf, &len, NULL, 0) == KVQ_ERR_INVALID_ARG);
    kvq_model_free(m);
}

TEST(chat_template_detection) {
    /* excerpts of the real templates, enough to carry each family's markers */
    static const struct {
        const char *tmpl;
        const char *family;
    } cases[] = {
        {"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
         "'<|im_end|>' + '\\n'}}{% endfor %}",
         "chatml"},
        {"{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ "
         "message['content'] | trim + '<|eot_id|>' %}",
         "llama3"},
        {"{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
         "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}",
         "llama2"},
        {"{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + "
         "message['content'] + ' [/INST]' }}{% endif %}{% endfor %}",
         "mistral"},
        {"{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}", "gemma"},
        {"{% if message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}"
         "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
         "phi3"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int f = kvqi_chat_detect(cases[i].tmpl, strlen(cases[i].tmpl));
        CHECKF(f >= 0 && !strcmp(kvqi_chat_family_name(f), cases[i].family), "case %zu: got %s", i,
               f >= 0 ? kvqi_chat_family_name(f) : "none");
    }
    const char *vicuna = "{{ 'USER: ' + message['content'] + ' ASSISTANT: ' }}";
    CHECK(kvqi_chat_detect(vicuna, strlen(vicuna)) == -1);
    /* the length bounds the search: the marker past it is not seen */
    const char *cut = "xxxx<start_of_turn>";
    CHECK(kvqi_chat_detect(cut, 4) == -1);
}

TEST(chat_template_of_real_model) {
    const char *path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    FILE *f = fopen(path, "rb");
    if (!f) {
        kvqt_skip(kvqt_, "no SmolLM2 model (make model)");
        return;
    }
    fclose(f);
    kvq_model *m;
    REQUIRE_OK(kvq_model_load(path, &m, NULL, 0));
    char buf[1024], msg[200] = "";
    size_t len;
    CHECK_OK(kvq_chat_format(m, NULL, CONVO, N_CONVO, 1, buf, sizeof buf, &len, msg, sizeof msg));
    CHECKF(!strcmp(buf, EXPECTED[0].text), "SmolLM2's template rendered:\n%s (%s)", buf, msg);
    kvq_model_free(m);
}

static size_t count_tokens(kvq_model *m, const char *text, int add_bos) {
    size_t n = 0;
    kvq_tokenize(m, text, add_bos, NULL, 0, &n);
    return n;
}

/* `kvq generate --chat` over two turns on stdin with a compressed cache: the first turn
 * evaluates the rendered system + user prompt, the second only the closing of the answer
 * and the new user turn, on top of the context the first one left. */
TEST(chat_cli_two_turns_keep_the_cache) {
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    char cmd[1024], path[512];
    snprintf(path, sizeof path, "%s/turns.txt", dir);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs("Hello there\n\nAgain\n", f); /* the blank line is no turn */
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s generate -m " TINY " --chat --chat-template chatml -sys 'Be brief.' -n 4 "
             "--cache-k q8_0 --cache-v q4_0 --threads 1 < %s > %s/out.txt 2> %s/err.txt", kvqt_cli_path(), path, dir, dir);
    CHECK(system(cmd) == 0);
    snprintf(path, sizeof path, "%s/err.txt", dir);
    f = fopen(path, "r");
    REQUIRE(f);
    char line[512];
    size_t eval[3] = {0}, ctx[3] = {0};
    long gen[3] = {0};
    int turns = 0;
    while (fgets(line, sizeof line, f)) {
        int t;
        size_t e, c;
        long g;
        if (sscanf(line, "kvq generate: turn %d: %zu prompt tokens evaluated, %ld generated, context %zu", &t, &e, &g,
                   &c) == 4 &&
            t >= 1 && t <= 2) {
            eval[t] = e;
            gen[t] = g;
            ctx[t] = c;
            turns++;
        }
    }
    fclose(f);
    REQUIRE(turns == 2);
    kvq_model *m;
    REQUIRE_OK(kvq_model_load(TINY, &m, NULL, 0));
    kvq_chat_message first[] = {{"system", "Be brief."}, {"user", "Hello there"}};
    char buf[512];
    size_t len;
    REQUIRE_OK(kvq_chat_format(m, "chatml", first, 2, 1, buf, sizeof buf, &len, NULL, 0));
    CHECK(eval[1] == count_tokens(m, buf, -1));
    CHECK(gen[1] >= 0 && gen[1] <= 4 && gen[2] >= 0 && gen[2] <= 4);
    CHECK(ctx[1] == eval[1] + (size_t)gen[1]);
    /* the answer's closing, then the new turn: nothing of turn 1 again */
    CHECK(eval[2] == count_tokens(m, "<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n", 0));
    CHECK(ctx[2] == ctx[1] + eval[2] + (size_t)gen[2]);
    CHECK(eval[2] < ctx[1]);
    kvq_model_free(m);
    /* -p answers one turn and exits; an unknown template fails with one line */
    snprintf(cmd, sizeof cmd, "%s generate -m " TINY " --chat --chat-template chatml -p Hi -n 2 --threads 1 "
             "> /dev/null 2> %s/one.txt < /dev/null", kvqt_cli_path(), dir);
    CHECK(system(cmd) == 0);
    snprintf(path, sizeof path, "%s/one.txt", dir);
    f = fopen(path, "r");
    REQUIRE(f);
    int ones = 0, others = 0;
    while (fgets(line, sizeof line, f)) {
        if (strstr(line, "turn 1:")) ones++;
        if (strstr(line, "turn 2:")) others++;
    }
    fclose(f);
    CHECK(ones == 1 && others == 0);
    snprintf(cmd, sizeof cmd, "%s generate -m " TINY " --chat --chat-template nosuch -p Hi > /dev/null 2>&1",
             kvqt_cli_path());
    CHECK(system(cmd) != 0);
}

/* Chat samples with generate's filters: top-k 1 at any temperature is greedy decoding,
 * and a repeat penalty is taken (it used to be refused with --chat). */
TEST(chat_takes_the_sampling_filters) {
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    char cmd[1024], a[4096] = "", b[4096] = "", path[512];
    const char *variants[] = {"--temp 0", "--temp 0.9 --top-k 1 -s 7"};
    char *outs[] = {a, b};
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, "%s generate -m " TINY " --chat --chat-template chatml -p Hi -n 12 --threads 1 "
                 "--quiet %s > %s/out%d.txt 2> /dev/null < /dev/null", kvqt_cli_path(), variants[i], dir, i);
        CHECK(system(cmd) == 0);
        snprintf(path, sizeof path, "%s/out%d.txt", dir, i);
        FILE *f = fopen(path, "r");
        REQUIRE(f);
        size_t got = fread(outs[i], 1, 4095, f);
        outs[i][got] = 0;
        fclose(f);
    }
    CHECKF(a[0] && !strcmp(a, b), "top-k 1 '%s' differs from greedy '%s'", b, a);
    snprintf(cmd, sizeof cmd, "%s generate -m " TINY " --chat --chat-template chatml -p Hi -n 8 --threads 1 --quiet "
             "--repeat-penalty 1.5 --repeat-last-n 16 --min-p 0.05 > /dev/null 2>&1 < /dev/null", kvqt_cli_path());
    CHECK(system(cmd) == 0);
}

/* Whether the JSON string at j (past its opening quote) spells the bytes of plain, as
 * the CLI's writer escapes them (\ufffd for a byte that is not UTF-8). */
static int json_spells(const char *j, const char *plain) {
    const unsigned char *p = (const unsigned char *)plain;
    while (*j && *j != '"') {
        if (*j != '\\') {
            if ((unsigned char)*j++ != *p++) return 0;
            continue;
        }
        char e = j[1];
        if (e == 'u') {
            unsigned v = 0;
            if (sscanf(j + 2, "%4x", &v) != 1) return 0;
            if (v == 0xfffd ? *p < 0x80 : v != *p) return 0;
            p++;
            j += 6;
            continue;
        }
        int c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
        if (*p++ != c) return 0;
        j += 2;
    }
    return *j == '"' && *p == 0;
}

/* --chat --json: one JSON object per turn, one per line, whose text is the streamed
 * answer of the same greedy run and whose counts follow the conversation. */
TEST(chat_json_lines_per_turn) {
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    char args[1024], path[512], out[512], text[4096] = "", line[8192];
    snprintf(path, sizeof path, "%s/turns.txt", dir);
    snprintf(out, sizeof out, "%s/out.txt", dir); /* kvqt_run_cli's stdout */
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs("Hello \"there\"\nAgain\n", f);
    fclose(f);
    snprintf(args, sizeof args, "generate -m " TINY " --chat --chat-template chatml -n 6 --threads 1 --quiet < %s", path);
    CHECK(kvqt_run_cli(kvqt_, args, NULL, 0) == 0);
    f = fopen(out, "r");
    REQUIRE(f);
    size_t got = fread(text, 1, sizeof text - 1, f);
    text[got] = 0;
    fclose(f);
    char *nl = strchr(text, '\n'); /* the first turn's answer */
    REQUIRE(nl);
    *nl = 0;
    snprintf(args, sizeof args, "generate -m " TINY " --chat --chat-template chatml -n 6 --threads 1 --quiet --json < %s",
             path);
    CHECK(kvqt_run_cli(kvqt_, args, NULL, 0) == 0);
    f = fopen(out, "r");
    REQUIRE(f);
    int objects = 0;
    long ctx_prev = 0;
    while (fgets(line, sizeof line, f)) {
        objects++;
        size_t n = strlen(line);
        CHECKF(line[0] == '{' && n > 2 && line[n - 2] == '}' && line[n - 1] == '\n', "not one object a line: %s", line);
        char key[32];
        snprintf(key, sizeof key, "\"turn\": %d,", objects);
        CHECKF(strstr(line, key) != NULL, "turn %d missing: %s", objects, line);
        if (objects == 1) CHECK(strstr(line, "\"user\": \"Hello \\\"there\\\"\"") != NULL);
        const char *t = strstr(line, "\"text\": \"");
        REQUIRE(t);
        if (objects == 1) CHECKF(json_spells(t + 9, text), "json text %.60s vs streamed '%s'", t + 9, text);
        const char *c = strstr(line, "\"context_tokens\": ");
        const char *g = strstr(line, "\"generated_tokens\": ");
        REQUIRE(c && g && strstr(line, "\"kv_total_bytes\": "));
        long ctx = atol(c + 18), gen = atol(g + 20);
        CHECK(gen >= 0 && gen <= 6 && ctx > ctx_prev + gen);
        ctx_prev = ctx;
    }
    fclose(f);
    CHECK(objects == 2);
}
