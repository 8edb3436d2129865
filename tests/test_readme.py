"""README.md's map of the files states each file's length: keep it true."""
import os
import re

ROOT = os.path.join(os.path.dirname(__file__), '..')


def test_the_file_table_gives_each_files_line_count():
    readme = open(os.path.join(ROOT, 'README.md')).read()
    rows = re.findall(r'^\| `([\w/]+\.py)` \| (\d+) \|', readme, re.M)
    assert len(rows) >= 10, 'the map of the files lost its line counts'
    for name, stated in rows:
        with open(os.path.join(ROOT, name)) as f:
            assert sum(1 for _ in f) == int(stated), f"README.md says {name} has {stated} lines"
