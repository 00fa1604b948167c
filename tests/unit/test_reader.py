"""Reading a table to score: the quick check that no line is too long to read whole (`lines_within`) never passes a
file whose longest line (`longest_line`, exact) is over the limit, and passes an ordinary file without the exact
count."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.score.reader import lines_within, longest_line


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.integers(0, 40), min_size=0, max_size=12), limit=st.integers(1, 25),
       last_newline=st.booleans())
def test_a_file_passes_the_quick_check_only_when_no_line_is_over_the_limit(tmp_path_factory, lines, limit,
                                                                           last_newline):
    path = tmp_path_factory.mktemp("lines") / "t.csv"
    path.write_bytes(b"\n".join(b"x" * n for n in lines) + (b"\n" if last_newline else b""))
    if lines_within(path, limit):
        assert longest_line(path) <= limit


def test_an_ordinary_table_passes_the_quick_check(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b,c\n" + b"1.5,2,text\n" * 200_000)
    assert lines_within(path, 1024) and lines_within(path, 32)  # (11-byte lines: a newline in every 16 bytes)
    path.write_bytes(b"a,b\n" + b"x" * 3000 + b"\n1,2\n")
    assert not lines_within(path, 1024) and longest_line(path) == 3000
