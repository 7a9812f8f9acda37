import os
import stat

from llavidal.utils.io import append_jsonl, atomic_write_json, read_jsonl


def test_atomic_write_has_normal_permissions_and_no_temp_files(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_read_jsonl_skips_torn_last_line(tmp_path):
    path = tmp_path / "p.jsonl"
    append_jsonl(path, {"id": 1})
    with open(path, "a") as handle:
        handle.write('{"id": 2, "te')
    assert read_jsonl(path) == [{"id": 1}]
