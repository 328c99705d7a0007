import bz2
import gzip
import json
import lzma

import pytest

from cings.jsonl import RecordError, iter_jsonl, open_text, read_text
from cings.records import read_records

ROWS = [{"id": f"q{i}", "instruction": "Who?", "contexts": [], "response": "x" * 50} for i in range(400)]
BODY = "".join(json.dumps(r) + "\n" for r in ROWS).encode()


def error(fn, *args) -> str:
    with pytest.raises(RecordError) as info:
        fn(*args)
    return str(info.value)


@pytest.mark.parametrize("suffix, compress", [("", bytes), (".gz", gzip.compress), (".bz2", bz2.compress),
                                              (".xz", lzma.compress)])
def test_plain_and_compressed_files_read_alike(tmp_path, suffix, compress):
    path = tmp_path / f"x.jsonl{suffix}"
    path.write_bytes(compress(b"\n" + BODY + b"   \n"))
    rows = list(iter_jsonl(path))
    assert [v for _, _, v in rows] == ROWS  # blank lines skipped
    assert rows[0][:2] == (f"{path}:2", 2)
    with open_text(path) as handle:
        assert handle.read() == "\n" + BODY.decode() + "   \n"


def test_missing_file_and_folder(tmp_path):
    assert error(list, iter_jsonl(tmp_path / "nope.jsonl")) == f"{tmp_path / 'nope.jsonl'}: no such file"
    assert error(open_text, tmp_path) == f"{tmp_path}: is a folder, not a file"


@pytest.mark.parametrize("suffix, compress", [(".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)])
def test_a_truncated_compressed_file_names_file_and_line(tmp_path, suffix, compress):
    path = tmp_path / f"x.jsonl{suffix}"
    whole = compress(BODY)
    path.write_bytes(whole[: len(whole) // 2])
    message = error(list, iter_jsonl(path))
    assert message.startswith(f"{path}:") and "truncated" in message
    lineno = int(message.split(":")[1])
    # The failing line is the first one not read whole: every line before it came through.
    got = []
    with pytest.raises(RecordError):
        for _, n, _ in iter_jsonl(path):
            got.append(n)
    assert got == list(range(1, lineno)) and lineno <= len(ROWS)
    if suffix != ".bz2":  # bz2 decodes whole 900 kB blocks: nothing of this one block comes out
        assert lineno > 1


def test_a_corrupt_gzip_names_the_file(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    whole = bytearray(gzip.compress(BODY))
    whole[-8] ^= 0xFF  # the CRC: every line decodes, the check at the end fails
    path.write_bytes(bytes(whole))
    message = error(list, iter_jsonl(path))
    assert message.startswith(f"{path}:{len(ROWS) + 1}: cannot decompress") and "CRC" in message


def test_a_plain_file_named_gz_names_the_file(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(BODY)
    assert error(list, iter_jsonl(path)).startswith(f"{path}:1: cannot decompress")


def test_non_utf8_names_the_line_of_the_bad_byte(tmp_path):
    # The bad byte sits on line 300, far past the first read chunk: a text-mode reader would fail
    # before yielding lines 1-299, or name no line at all.
    lines = BODY.split(b"\n")
    lines[299] = lines[299].replace(b"Who?", b"Wh\xe9?")
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\n".join(lines))
    message = error(list, iter_jsonl(path))
    assert message.startswith(f"{path}:300: not UTF-8 text (byte 0xe9")
    assert error(read_text, path).startswith(f"{path}:300:")
    assert error(list, read_records(path)).startswith(f"{path}:300:")


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + BODY)
    assert len(list(iter_jsonl(path))) == len(ROWS)


@pytest.mark.parametrize("line, expected", [
    ('{"id": ', "(Expecting value, column 8)"),
    ('{"id": "q1" "x": 1}', "(Expecting ',' delimiter, column 13)"),
    ('{"id": "q1', "(Unterminated string starting at column 8)"),
    ('{"id": "a\tb"}', "(Invalid control character at column 10)"),
    ('{"id": 1} 2', "(Extra data, column 11)"),
])
def test_json_errors_read_well(tmp_path, line, expected):
    path = tmp_path / "x.jsonl"
    path.write_text('{"ok": 1}\n' + line + "\n", encoding="utf-8")
    message = error(list, iter_jsonl(path))
    assert message == f"{path}:2: not valid JSON {expected}"
    assert "at at" not in message


def test_bad_json_can_be_yielded_in_place(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\nnope\n{"b": 2}\n', encoding="utf-8")
    values = [v for _, _, v in iter_jsonl(path, bad_json="yield")]
    assert values[0] == {"a": 1} and isinstance(values[1], RecordError) and values[2] == {"b": 2}
    assert str(values[1]).startswith(f"{path}:2: not valid JSON")
