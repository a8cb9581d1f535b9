"""Reading raw text: plain and gzip, strict UTF-8, and errors that name the file and the line."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiokd.data.text import read_lines, read_parallel
from aiokd.errors import UserError


def write(path, data: bytes, compress: bool = False):
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_reads_plain_and_gzip(tmp_path, compress):
    path = write(tmp_path / "a.txt", b"eins\nzwei drei\n\nvier", compress)
    assert read_lines(path) == ["eins", "zwei drei", "", "vier"]


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    path = write(tmp_path / "no_suffix", b"a\nb\n", compress=True)
    assert read_lines(path) == ["a", "b"]


def test_strips_crlf_and_byte_order_mark_only(tmp_path):
    path = write(tmp_path / "a.txt", "\ufeffa\r\n b \r\nc\u2028d\n".encode())
    assert read_lines(path) == ["a", " b ", "c\u2028d"]


def test_a_single_newline_is_one_empty_line(tmp_path):
    assert read_lines(write(tmp_path / "a.txt", b"\n")) == [""]


def test_very_long_line(tmp_path):
    line = "x" * 100_000
    assert read_lines(write(tmp_path / "a.txt", (line + "\nkurz\n").encode())) == [line, "kurz"]


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"missing\.txt: no such file"):
        read_lines(tmp_path / "missing.txt")


def test_directory(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        read_lines(tmp_path)


@pytest.mark.parametrize("compress", [False, True])
def test_empty_file(tmp_path, compress):
    path = write(tmp_path / "empty.de", b"", compress)
    with pytest.raises(UserError, match=r"empty\.de: file is empty"):
        read_lines(path)


@pytest.mark.parametrize("compress", [False, True])
def test_invalid_utf8_names_file_and_line(tmp_path, compress):
    path = write(tmp_path / "latin1.de", "gut\nsehr gut\nschön\n".encode("latin-1"), compress)
    with pytest.raises(UserError) as error:
        read_lines(path)
    assert str(error.value) == f"{path}:3: not valid UTF-8 (byte 0xf6)"


def test_binary_file_names_file_and_line(tmp_path):
    path = write(tmp_path / "model.bin", b"text\n\x00\x01\x02\xff\n")
    with pytest.raises(UserError, match=r"model\.bin:2: NUL byte"):
        read_lines(path)


def test_damaged_gzip(tmp_path):
    data = gzip.compress(b"ein satz\n" * 100)
    path = write(tmp_path / "cut.de.gz", data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.de\.gz: damaged gzip file"):
        read_lines(path)


def test_read_parallel_finds_plain_and_gzip_sides(tmp_path):
    write(tmp_path / "train.de", b"hallo\nwelt\n")
    write(tmp_path / "train.en.gz", b"hello\nworld\n", compress=True)
    assert read_parallel(tmp_path / "train", "de", "en") == (["hallo", "welt"], ["hello", "world"])


def test_read_parallel_missing_side(tmp_path):
    write(tmp_path / "train.de", b"hallo\n")
    with pytest.raises(UserError, match=r"train\.en: no such file \(nor train\.en\.gz\)"):
        read_parallel(tmp_path / "train", "de", "en")


def test_read_parallel_unequal_line_counts(tmp_path):
    src = write(tmp_path / "train.de", b"a\nb\nc\n")
    tgt = write(tmp_path / "train.en", b"a\nb\n")
    with pytest.raises(UserError) as error:
        read_parallel(tmp_path / "train", "de", "en")
    message = str(error.value)
    assert f"{src} has 3 lines" in message and f"{tgt} has 2" in message


_LINE = st.text(st.characters(exclude_characters="\n\r\x00\ufeff", exclude_categories=["Cs"]))
_ONE_FILE = [HealthCheck.function_scoped_fixture]


@settings(max_examples=60, deadline=None, suppress_health_check=_ONE_FILE)
@given(lines=st.lists(_LINE, min_size=1, max_size=8), compress=st.booleans())
def test_text_lines_round_trip(tmp_path, lines, compress):
    path = write(tmp_path / "lines.txt", ("\n".join(lines) + "\n").encode(), compress)
    assert read_lines(path) == lines


@settings(max_examples=200, deadline=None, suppress_health_check=_ONE_FILE)
@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_read_or_raise_user_error(tmp_path, data):
    path = write(tmp_path / "bytes.bin", data)
    try:
        lines = read_lines(path)
    except UserError as error:
        assert str(path) in str(error)
        return
    assert all(isinstance(line, str) and "\n" not in line for line in lines)
    assert len(lines) == data.count(b"\n") + (not data.endswith(b"\n"))
