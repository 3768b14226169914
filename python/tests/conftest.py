# Lets `pytest python/tests` import the package from the source tree without installing.
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
