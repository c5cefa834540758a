"""Print the scenario events of console logs, debug output in full: python3 -m tests.vm.show LOG…"""

import json
import sys
from pathlib import Path

from tests.vm.vm import ConsoleEvents

for path in sys.argv[1:]:
    reader = ConsoleEvents()
    for line in Path(path).read_text(errors="replace").splitlines():
        got = reader.feed(line)
        if got is None:
            continue
        name, data = got
        if name == "debug" and "cmd" in data:
            print(f"== debug: {' '.join(data['cmd'])}\n{data['out']}")
        else:
            print(f"== {name}\n{json.dumps(data, indent=1)}")
