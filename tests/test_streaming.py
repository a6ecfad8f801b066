from chatgpt_cli.streaming import TextStream
from chatgpt_cli.tokenizer import Tokenizer

TOK = Tokenizer()


def stream_all(ids, stop=()):
    s = TextStream(TOK, stop)
    pieces = [s.push(i) for i in ids] + [s.finish()]
    return pieces, s


def test_split_multibyte_characters_print_exactly_the_decode():
    text = "Emoji 😀🎉, accents é à ü, CJK 中文字符 and 👨‍👩‍👧"
    ids = TOK.encode(text)
    pieces, _ = stream_all(ids)
    assert "".join(pieces) == TOK.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)  # no half character was ever printed


def test_invalid_bytes_match_the_whole_decode():
    ids = TOK.encode("😀")[:1] + TOK.encode(" ok")  # a character cut short
    pieces, _ = stream_all(ids)
    assert "".join(pieces) == TOK.decode(ids)


def test_stop_string_split_across_tokens_is_never_printed():
    text = "Sure, here it is.\nUser: next question"
    ids = TOK.encode(text)
    pieces, s = stream_all(ids, stop=["\nUser:"])
    assert "".join(pieces) == "Sure, here it is."
    assert s.stopped
    # the text before the stop string was released as soon as it could not be part of it
    assert "".join(pieces[:-1]).startswith("Sure, here it is")


def test_held_tail_is_released_when_it_cannot_be_a_stop():
    ids = TOK.encode("a\nUse it")
    pieces, s = stream_all(ids, stop=["\nUser:"])
    assert "".join(pieces) == "a\nUse it" and not s.stopped


def test_earliest_of_several_stop_strings_wins():
    ids = TOK.encode("one END two STOP three")
    pieces, _ = stream_all(ids, stop=["STOP", "END"])
    assert "".join(pieces) == "one "
