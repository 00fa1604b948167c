"""What the serving front passes on between a client and the Bento behind it (bento/front/proxy.py)."""

from multidict import CIMultiDict

from bento.front.proxy import _FRONT_ONLY, _HOP_BY_HOP, end_to_end


def test_headers_the_connection_header_names_are_not_forwarded_and_repeated_ones_stay_apart():
    sent = CIMultiDict([("Connection", "keep-alive, X-Internal-Hop"), ("connection", "X-Other"),
                        ("X-Internal-Hop", "1"), ("x-other", "2"), ("Accept", "a"), ("Accept", "b"),
                        ("X-Warm-Up", "claimed"), ("Transfer-Encoding", "chunked"), ("Content-Type", "x")])
    passed = end_to_end(sent, _HOP_BY_HOP - {"content-length"} | _FRONT_ONLY)
    assert list(passed.items()) == [("Accept", "a"), ("Accept", "b"), ("Content-Type", "x")]


def test_two_set_cookie_headers_of_an_answer_reach_the_client_as_two():
    answer = CIMultiDict([("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/"), ("Content-Length", "3"),
                          ("Keep-Alive", "timeout=5")])
    passed = end_to_end(answer, _HOP_BY_HOP)
    assert passed.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"] and "Content-Length" not in passed
