"""The demo skill: read the task input (JSON) from stdin, print a JSON result on stdout."""

import json
import os
import sys


def main() -> int:
    raw = sys.stdin.read()
    try:
        task_input = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        print(f"input is not JSON: {exc}", file=sys.stderr)
        return 2
    name = task_input.get("name") if isinstance(task_input, dict) else None
    result = {
        "greeting": f"Hello, {name or 'world'}!",
        "input": task_input,
        "task_guid": os.environ.get("KOHAKKU_TASK_GUID", ""),
    }
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
