"""Job script for the CML provider tests, run by the local workspace as a CML job.

Driven by its environment: ``MF_TEST_SLEEP`` seconds to sleep, ``MF_TEST_FAIL_WITH`` an error
message to fail with, ``MF_TEST_RESULT_FILE`` a project file (relative to the working
directory, the project root) to write ``{"error": ..., "environment": ...}`` into.
"""

import json
import os
import sys
import time


def main() -> int:
    time.sleep(float(os.environ.get("MF_TEST_SLEEP", "0")))
    error = os.environ.get("MF_TEST_FAIL_WITH") or None
    result_file = os.environ.get("MF_TEST_RESULT_FILE")
    if result_file:
        os.makedirs(os.path.dirname(result_file) or ".", exist_ok=True)
        markers = {k: v for k, v in os.environ.items() if k.startswith("MF_")}
        with open(result_file, "w") as fh:
            json.dump({"error": error, "environment": markers, "argv": sys.argv[1:]}, fh)
    if error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
