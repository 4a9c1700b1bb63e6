"""harness/textfiles.py: user text read strictly."""
import pytest

from harness.data import CALIB_DIR, EVAL_DIR
from harness.errors import HarnessError
from harness.textfiles import check_long_enough, letter_share, read_text_file


def test_shipped_texts_of_every_kind_are_text():
    for path in [*EVAL_DIR.glob("*.txt"), *CALIB_DIR.glob("*.*")]:
        if path.suffix in (".txt", ".jsonl"):
            assert read_text_file(path, "text")


@pytest.mark.parametrize("data, needle", [
    (b"ELF\x00\x01binary", "binary file (NUL bytes)"),
    ("na\xefve".encode("latin-1") + b" text " * 50, "not UTF-8 text (invalid byte at offset 2)"),
    (b"  \n\t ", "is empty"),
    (b"3.14159 2.71828 1.41421 " * 40, "does not look like text"),
    (b"+/==0123+/==4567 " * 50, "does not look like text"),
])
def test_non_text_is_refused_in_one_line(tmp_path, data, needle):
    f = tmp_path / "input.txt"
    f.write_bytes(data)
    with pytest.raises(HarnessError, match="calibration file .*" + needle.replace("(", r"\(").replace(")", r"\)")):
        read_text_file(f, "calibration file")


def test_letters_of_any_script_count():
    assert letter_share("Привет, мир! 你好世界") > 0.8 and letter_share("12 + 34 = 46") == 0.0


def test_length_bound_uses_bytes(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("twelve bytes")
    check_long_enough(f, 12, "eval text", "eval.seqlen")
    with pytest.raises(HarnessError, match="has 12 bytes, fewer than the 13 tokens of one window \\(eval.seqlen\\)"):
        check_long_enough(f, 13, "eval text", "eval.seqlen")
