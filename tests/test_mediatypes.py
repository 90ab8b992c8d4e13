"""Tests for dicomweb_wsgi.mediatypes: Content-Type / Accept parsing and negotiation."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomweb_wsgi.errors import BadRequest
from dicomweb_wsgi.mediatypes import (
    MediaType,
    Offer,
    Selection,
    accept_from_environ,
    negotiate,
    parse_accept,
    parse_media_type,
    refuse_dicom_with_rendered,
)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG2000 = "1.2.840.10008.1.2.4.90"

# Real client header strings (PS3.18 notes §4.1, §4.2, §2.1).
DICOMWEB_CLIENT_STOW = (
    'multipart/related; type="application/dicom"; boundary="0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"'
)
OHIF_FRAMES_UNQUOTED = "multipart/related; type=application/octet-stream; transfer-syntax=*"
OHIF_FRAMES_QUOTED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
ORTHANC_NESTED = 'multipart/related; type="application/octet-stream; transfer-syntax=*"'
DICOMWEB_CLIENT_JSON = "application/dicom+json, application/json"
JAVA_DEFAULT_ACCEPT = "text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2"

# Offers the way resources will declare them.
INSTANCE_OFFERS = [
    Offer("application/dicom", True, frozenset({EXPLICIT_LE, JPEG_BASELINE, JPEG2000})),
    Offer("application/octet-stream", True, frozenset({EXPLICIT_LE})),
    Offer("application/dicom", False, frozenset({EXPLICIT_LE, JPEG_BASELINE})),
]
FRAME_OFFERS = [
    Offer("application/octet-stream", True, frozenset({EXPLICIT_LE})),
    Offer("image/jpeg", True, frozenset({JPEG_BASELINE})),
    Offer("image/jp2", True, frozenset({JPEG2000})),
]
METADATA_OFFERS = [
    Offer("application/dicom+json", False),
    Offer("application/dicom+xml", True),
]
RENDERED_OFFERS = [
    Offer("image/jpeg", False),
    Offer("image/png", False),
    Offer("image/gif", False),
]


# --- parse_media_type -------------------------------------------------------------------------------------


def test_parse_media_type_dicomweb_client_stow_quoted_boundary_unquoted():
    mt = parse_media_type(DICOMWEB_CLIENT_STOW)
    assert mt.type == "multipart/related"
    assert mt.get("type") == "application/dicom"
    assert mt.get("boundary") == "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"
    assert mt.q == 1.0


@pytest.mark.parametrize("header", [OHIF_FRAMES_UNQUOTED, OHIF_FRAMES_QUOTED, ORTHANC_NESTED])
def test_parse_media_type_ohif_and_orthanc_spellings_same_result(header):
    mt = parse_media_type(header)
    assert mt == MediaType("multipart/related", {"type": "application/octet-stream", "transfer-syntax": "*"})


def test_parse_media_type_nested_type_explicit_outer_param_wins():
    mt = parse_media_type(
        f'multipart/related; type="application/octet-stream; transfer-syntax={EXPLICIT_LE}"; transfer-syntax=*'
    )
    assert mt.get("type") == "application/octet-stream"
    assert mt.get("transfer-syntax") == "*"


def test_parse_media_type_case_insensitive_names_lowercased_values_kept():
    mt = parse_media_type('Multipart/Related; TYPE="Application/DICOM"; Boundary="AbC-dEf"')
    assert mt.type == "multipart/related"
    assert dict(mt.params) == {"type": "application/dicom", "boundary": "AbC-dEf"}
    assert mt.get("BOUNDARY") == "AbC-dEf"


def test_parse_media_type_quoted_pair_escapes_resolved():
    mt = parse_media_type(r'multipart/related; boundary="a\"b\\c"; x="semi;colon,comma"')
    assert mt.get("boundary") == 'a"b\\c'
    assert mt.get("x") == "semi;colon,comma"


@pytest.mark.parametrize(
    "header",
    [
        "application/dicom;charset=utf-8",
        "application/dicom ; charset=utf-8",
        "application/dicom;\tcharset=utf-8  ",
        "application/dicom; charset = utf-8",
        "  application/dicom;;charset=utf-8;",
        'application/dicom; charset="utf-8"',
    ],
)
def test_parse_media_type_whitespace_and_empty_params_tolerated(header):
    assert parse_media_type(header) == MediaType("application/dicom", {"charset": "utf-8"})


def test_parse_media_type_q_is_an_ordinary_parameter():
    mt = parse_media_type("application/dicom; q=0.5")
    assert mt.q == 1.0
    assert mt.get("q") == "0.5"


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "   ",
        "application",
        "/dicom",
        "application/",
        "application/dicom; boundary",
        "application/dicom; boundary=",
        'multipart/related; boundary="unterminated',
        "application/dicom extra",
        "application/dicom; =value",
        "*/*",
        "image/*",
        "application/dicom, application/json",
        "multipart/related; boundary=a; boundary=b",
        'application/dicom; x="bad\x00char"',
        'multipart/related; type="application/dicom; ;="',
        "\x00\x01\x02",
        "ä/ö",
        "multipart/related; boundary=a b",
        "a/b; x=\u0101",
    ],
)
def test_parse_media_type_garbage_raises_bad_request(garbage):
    with pytest.raises(BadRequest) as info:
        parse_media_type(garbage)
    assert "malformed media type" in info.value.reason
    assert info.value.status == 400


def test_parse_media_type_error_message_names_value_and_problem():
    with pytest.raises(BadRequest, match=r"'application/dicom; boundary'.*no value"):
        parse_media_type("application/dicom; boundary")


def test_parse_media_type_long_garbage_message_is_truncated():
    with pytest.raises(BadRequest) as info:
        parse_media_type("x" * 5000)
    assert len(info.value.reason) < 300


# --- MediaType ----------------------------------------------------------------------------------------------


def test_media_type_str_quotes_only_values_that_need_it():
    mt = MediaType("multipart/related", {"type": "application/dicom", "transfer-syntax": "*", "boundary": "a b"})
    assert str(mt) == 'multipart/related; type="application/dicom"; transfer-syntax=*; boundary="a b"'


def test_media_type_str_escapes_quotes_and_backslashes():
    mt = MediaType("a/b", {"x": 'say "hi" \\ bye', "e": ""})
    assert str(mt) == r'a/b; x="say \"hi\" \\ bye"; e=""'
    assert parse_media_type(str(mt)) == mt


def test_media_type_str_includes_q_when_not_one():
    assert str(MediaType("image/jpeg", {}, 0.5)) == "image/jpeg; q=0.5"
    assert str(MediaType("image/jpeg", {}, 0.125)) == "image/jpeg; q=0.125"


def test_media_type_str_control_character_raises_value_error():
    with pytest.raises(ValueError):
        str(MediaType("a/b", {"x": "line\r\nInjected: yes"}))


def test_media_type_constructor_normalises_case_and_freezes_params():
    source = {"Type": "application/dicom"}
    mt = MediaType("Multipart/Related", source)
    source["Type"] = "changed"
    assert mt.type == "multipart/related"
    assert mt.get("type") == "application/dicom"
    with pytest.raises(TypeError):
        mt.params["boundary"] = "x"  # type: ignore[index]
    with pytest.raises(AttributeError):
        mt.type = "x/y"  # type: ignore[misc]


def test_media_type_get_missing_returns_default():
    mt = MediaType("application/dicom")
    assert mt.get("charset") is None
    assert mt.get("charset", "utf-8") == "utf-8"


def test_media_type_equal_values_hash_equal():
    a = parse_media_type(OHIF_FRAMES_QUOTED)
    b = parse_media_type(OHIF_FRAMES_UNQUOTED)
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1


# --- parse_accept -------------------------------------------------------------------------------------------


def test_parse_accept_dicomweb_client_json_list_keeps_order():
    assert [r.type for r in parse_accept([DICOMWEB_CLIENT_JSON])] == ["application/dicom+json", "application/json"]


def test_parse_accept_q_values_sorted_descending():
    ranges = parse_accept(["image/png;q=0.5, image/jpeg, image/gif;q=0.8, */*;q=0.1"])
    assert [(r.type, r.q) for r in ranges] == [
        ("image/jpeg", 1.0),
        ("image/gif", 0.8),
        ("image/png", 0.5),
        ("*/*", 0.1),
    ]


def test_parse_accept_equal_q_keeps_given_order():
    ranges = parse_accept(["c/c;q=0.5, a/a;q=0.5", "b/b;q=0.5"])
    assert [r.type for r in ranges] == ["c/c", "a/a", "b/b"]


def test_parse_accept_q_zero_kept_last_for_negotiate_to_refuse():
    ranges = parse_accept(["a/a;q=0, b/b;q=0.000, c/c;q=0.001"])
    assert [(r.type, r.q) for r in ranges] == [("c/c", 0.001), ("a/a", 0.0), ("b/b", 0.0)]


@pytest.mark.parametrize("q, expected", [("1", 1.0), ("1.0", 1.0), ("0.5", 0.5), (".2", 0.2), ('"0.3"', 0.3)])
def test_parse_accept_q_spellings_parsed(q, expected):
    [r] = parse_accept([f"image/jpeg;q={q}"])
    assert r.q == expected
    assert "q" not in r.params


@pytest.mark.parametrize("q", ["abc", "2", "1.5", "-1", "1e0", "nan", "inf", ""])
def test_parse_accept_invalid_q_item_skipped(q):
    assert [r.type for r in parse_accept([f"image/jpeg;q={q}, image/png"])] == ["image/png"]


def test_parse_accept_params_after_q_kept():
    [r] = parse_accept(['multipart/related; q=0.5; type="application/dicom"; transfer-syntax=*'])
    assert r.q == 0.5
    assert dict(r.params) == {"type": "application/dicom", "transfer-syntax": "*"}


def test_parse_accept_comma_inside_quotes_does_not_split():
    ranges = parse_accept(['multipart/related; type="application/dicom"; x="a,b", image/jpeg'])
    assert [r.type for r in ranges] == ["multipart/related", "image/jpeg"]
    assert ranges[0].get("x") == "a,b"


def test_parse_accept_escaped_quote_inside_quotes_does_not_end_string():
    ranges = parse_accept([r'a/b; x="q\",still", c/d'])
    assert [(r.type, r.get("x")) for r in ranges] == [("a/b", 'q",still'), ("c/d", None)]


@pytest.mark.parametrize("header", [OHIF_FRAMES_UNQUOTED, OHIF_FRAMES_QUOTED, ORTHANC_NESTED])
def test_parse_accept_ohif_and_orthanc_spellings_normalised(header):
    [r] = parse_accept([header])
    assert r.type == "multipart/related"
    assert dict(r.params) == {"type": "application/octet-stream", "transfer-syntax": "*"}


def test_parse_accept_java_default_bare_star_read_as_any():
    ranges = parse_accept([JAVA_DEFAULT_ACCEPT])
    assert [(r.type, r.q) for r in ranges] == [
        ("text/html", 1.0),
        ("image/gif", 1.0),
        ("image/jpeg", 1.0),
        ("*/*", 0.2),
        ("*/*", 0.2),
    ]


def test_parse_accept_garbage_items_skipped_others_kept():
    ranges = parse_accept(['garbage, , ;;, image/jpeg, a/b; x, */html, "quoted", application/dicom+json;q=0.9'])
    assert [r.type for r in ranges] == ["image/jpeg", "application/dicom+json"]


@pytest.mark.parametrize("garbage", ["", " ", ",,,", "garbage", "\x00", 'a/b; x="open', "q=1", "/", "*/json"])
def test_parse_accept_all_garbage_returns_empty(garbage):
    assert parse_accept([garbage]) == []


def test_parse_accept_several_values_combined():
    ranges = parse_accept(["image/jpeg;q=0.5", "image/png", ""])
    assert [r.type for r in ranges] == ["image/png", "image/jpeg"]


def test_parse_accept_wildcards_kept():
    ranges = parse_accept(["*/*, image/*; q=0.9, multipart/related; type=image/*"])
    assert [(r.type, r.get("type")) for r in ranges] == [
        ("*/*", None),
        ("multipart/related", "image/*"),
        ("image/*", None),
    ]


# --- negotiate ----------------------------------------------------------------------------------------------


def _negotiate(header: str, offers: list[Offer]) -> Selection | None:
    return negotiate(parse_accept([header]), offers)


def test_negotiate_empty_accept_selects_first_offer_without_syntax():
    sel = negotiate([], INSTANCE_OFFERS)
    assert sel is not None
    assert sel.offer is INSTANCE_OFFERS[0]
    assert sel.transfer_syntax is None
    assert sel.media_range.type == "*/*"


def test_negotiate_no_offers_returns_none():
    assert negotiate([], []) is None
    assert _negotiate("*/*", []) is None


def test_negotiate_star_star_selects_first_offer():
    sel = _negotiate("*/*", INSTANCE_OFFERS)
    assert sel is not None and sel.offer is INSTANCE_OFFERS[0] and sel.transfer_syntax is None


def test_negotiate_star_star_with_unavailable_syntax_skips_to_offer_that_has_it():
    offers = [
        Offer("application/dicom", True, frozenset({EXPLICIT_LE})),
        Offer("image/jp2", True, frozenset({JPEG2000})),
    ]
    sel = _negotiate(f"*/*; transfer-syntax={JPEG2000}", offers)
    assert sel is not None and sel.offer is offers[1] and sel.transfer_syntax == JPEG2000


def test_negotiate_dicomweb_client_retrieve_default_multipart_dicom():
    sel = _negotiate('multipart/related; type="application/dicom"', INSTANCE_OFFERS)
    assert sel is not None
    assert sel.offer is INSTANCE_OFFERS[0]
    assert sel.transfer_syntax is None


def test_negotiate_transfer_syntax_star_returned():
    sel = _negotiate('multipart/related; type="application/dicom"; transfer-syntax=*', INSTANCE_OFFERS)
    assert sel is not None and sel.offer is INSTANCE_OFFERS[0] and sel.transfer_syntax == "*"


def test_negotiate_supported_transfer_syntax_returned():
    header = f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}'
    sel = _negotiate(header, INSTANCE_OFFERS)
    assert sel is not None and sel.offer is INSTANCE_OFFERS[0] and sel.transfer_syntax == JPEG_BASELINE


def test_negotiate_unsupported_transfer_syntax_returns_none():
    header = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4'
    assert _negotiate(header, INSTANCE_OFFERS) is None


def test_negotiate_unsupported_transfer_syntax_falls_back_to_next_range():
    sel = _negotiate(
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4, '
        'multipart/related; type="application/dicom"; q=0.5',
        INSTANCE_OFFERS,
    )
    assert sel is not None and sel.offer is INSTANCE_OFFERS[0] and sel.transfer_syntax is None
    assert sel.media_range.q == 0.5


@pytest.mark.parametrize("header", [OHIF_FRAMES_UNQUOTED, OHIF_FRAMES_QUOTED, ORTHANC_NESTED])
def test_negotiate_ohif_frames_accept_selects_octet_stream_as_stored(header):
    sel = _negotiate(header, FRAME_OFFERS)
    assert sel is not None
    assert sel.offer is FRAME_OFFERS[0]
    assert sel.transfer_syntax == "*"


def test_negotiate_multipart_without_type_selects_first_multipart_offer():
    offers = [Offer("image/jpeg", False), Offer("application/dicom", True), Offer("image/png", True)]
    sel = _negotiate("multipart/related", offers)
    assert sel is not None and sel.offer is offers[1]


def test_negotiate_multipart_star_treated_as_multipart_related():
    sel = _negotiate("multipart/*", METADATA_OFFERS)
    assert sel is not None and sel.offer is METADATA_OFFERS[1]


def test_negotiate_multipart_type_image_star_selects_first_multipart_image_offer():
    sel = _negotiate("multipart/related; type=image/*", FRAME_OFFERS)
    assert sel is not None and sel.offer is FRAME_OFFERS[1]


def test_negotiate_multipart_type_star_star_selects_first_multipart_offer():
    sel = _negotiate('multipart/related; type="*/*"', METADATA_OFFERS)
    assert sel is not None and sel.offer is METADATA_OFFERS[1]


def test_negotiate_multipart_type_with_syntax_selects_offer_having_it():
    sel = _negotiate(f'multipart/related; type="image/*"; transfer-syntax={JPEG2000}', FRAME_OFFERS)
    assert sel is not None and sel.offer is FRAME_OFFERS[2] and sel.transfer_syntax == JPEG2000


def test_negotiate_multipart_type_mismatch_returns_none():
    assert _negotiate('multipart/related; type="application/dicom"', FRAME_OFFERS) is None


def test_negotiate_plain_type_does_not_match_multipart_offer():
    assert _negotiate("application/octet-stream", FRAME_OFFERS) is None
    assert _negotiate("image/jpeg", FRAME_OFFERS) is None


def test_negotiate_plain_application_dicom_selects_single_part_offer():
    sel = _negotiate("application/dicom", INSTANCE_OFFERS)
    assert sel is not None and sel.offer is INSTANCE_OFFERS[2]


def test_negotiate_type_star_selects_first_non_multipart_offer_of_main_type():
    sel = _negotiate("image/*", RENDERED_OFFERS)
    assert sel is not None and sel.offer is RENDERED_OFFERS[0]
    assert _negotiate("image/*", FRAME_OFFERS) is None
    assert _negotiate("text/*", RENDERED_OFFERS) is None


def test_negotiate_dicomweb_client_metadata_accept_selects_dicom_json():
    sel = _negotiate(DICOMWEB_CLIENT_JSON, METADATA_OFFERS)
    assert sel is not None and sel.offer is METADATA_OFFERS[0] and sel.transfer_syntax is None


def test_negotiate_application_json_alone_not_dicom_json():
    assert _negotiate("application/json", METADATA_OFFERS) is None


def test_negotiate_offer_without_syntaxes_ignores_requested_syntax():
    sel = _negotiate("application/dicom+json; transfer-syntax=1.2.3", METADATA_OFFERS)
    assert sel is not None and sel.offer is METADATA_OFFERS[0] and sel.transfer_syntax is None


def test_negotiate_q_order_beats_server_preference():
    sel = _negotiate("image/jpeg;q=0.4, image/png;q=0.9, image/gif", RENDERED_OFFERS)
    assert sel is not None and sel.offer.media_type == "image/gif"
    assert sel.media_range.type == "image/gif"


def test_negotiate_unsorted_input_sorted_by_q_ties_in_given_order():
    ranges = [MediaType("image/png", {}, 0.5), MediaType("image/gif", {}, 0.9), MediaType("image/jpeg", {}, 0.9)]
    sel = negotiate(ranges, RENDERED_OFFERS)
    assert sel is not None and sel.offer.media_type == "image/gif"


def test_negotiate_hand_built_q_zero_range_ignored():
    assert negotiate([MediaType("image/png", {}, 0.0)], RENDERED_OFFERS) is None


def test_negotiate_q_zero_type_refuses_what_a_wildcard_allows():
    # RFC 9110 §12.5.1: the more specific range decides; q=0 means "not acceptable".
    sel = _negotiate("image/jpeg;q=0, image/*", RENDERED_OFFERS)
    assert sel is not None and sel.offer.media_type == "image/png"
    assert _negotiate("*/*, image/jpeg;q=0", RENDERED_OFFERS).offer.media_type == "image/png"
    assert _negotiate("*/*, image/*;q=0", RENDERED_OFFERS) is None


def test_negotiate_q_zero_every_offer_refused_is_none():
    offers = [Offer("application/dicom+json", False), Offer("application/json", False)]
    assert _negotiate("application/dicom+json;q=0, application/json;q=0, */*", offers) is None
    assert _negotiate("application/dicom+json;q=0", offers) is None


def test_negotiate_q_zero_less_specific_than_the_chosen_range_does_not_refuse():
    sel = _negotiate("image/png, image/*;q=0", RENDERED_OFFERS)
    assert sel is not None and sel.offer.media_type == "image/png"


def test_negotiate_q_zero_with_transfer_syntax_refuses_only_that_syntax():
    offers = [Offer("application/dicom", True, frozenset({EXPLICIT_LE, JPEG_BASELINE}))]
    refusal = f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}; q=0'
    assert _negotiate(f'{refusal}, multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}',
                      offers) is None
    sel = _negotiate(f'{refusal}, multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}',
                     offers)
    assert sel is not None and sel.transfer_syntax == EXPLICIT_LE


@pytest.mark.parametrize("header", [
    "application/dicom, image/jpeg",
    'multipart/related; type="application/dicom", image/png;q=0.5',
    'application/dicom+json, multipart/related; type="image/jpeg"',
    "application/octet-stream, text/html",
])
def test_refuse_dicom_with_rendered_is_400(header):
    with pytest.raises(BadRequest, match="8.7.5"):
        refuse_dicom_with_rendered(parse_accept([header]))


@pytest.mark.parametrize("header", [
    "", "image/jpeg, image/png", "application/dicom", "*/*, image/jpeg", "application/*, image/jpeg",
    "multipart/related, image/jpeg", "application/dicom;q=0, image/jpeg",
])
def test_refuse_dicom_with_rendered_allows_one_kind_and_wildcards(header):
    refuse_dicom_with_rendered(parse_accept([header]) if header else [])


def test_negotiate_case_insensitive_types():
    ranges = [MediaType("Multipart/Related", {"TYPE": "Application/DICOM"})]
    sel = negotiate(ranges, INSTANCE_OFFERS)
    assert sel is not None and sel.offer is INSTANCE_OFFERS[0]


def test_negotiate_java_default_accept_for_metadata_uses_star_star():
    sel = _negotiate(JAVA_DEFAULT_ACCEPT, METADATA_OFFERS)
    assert sel is not None and sel.offer is METADATA_OFFERS[0]
    assert sel.media_range.q == 0.2


def test_negotiate_nothing_acceptable_returns_none():
    assert _negotiate("text/html, application/pdf", RENDERED_OFFERS) is None


# --- accept_from_environ ------------------------------------------------------------------------------------


def test_accept_from_environ_missing_header_and_query_empty():
    assert accept_from_environ({}) == []
    assert accept_from_environ({"QUERY_STRING": "", "HTTP_ACCEPT": ""}) == []


def test_accept_from_environ_header_used():
    ranges = accept_from_environ({"HTTP_ACCEPT": DICOMWEB_CLIENT_JSON})
    assert [r.type for r in ranges] == ["application/dicom+json", "application/json"]


def test_accept_from_environ_query_parameter_wins_over_header():
    env = {"QUERY_STRING": "accept=image%2Fjpeg", "HTTP_ACCEPT": "application/dicom+json"}
    assert [r.type for r in accept_from_environ(env)] == ["image/jpeg"]


def test_accept_from_environ_repeated_query_parameters_combined():
    env = {"QUERY_STRING": "accept=image/png;q=0.5&includefield=all&accept=image/jpeg"}
    assert [r.type for r in accept_from_environ(env)] == ["image/jpeg", "image/png"]


def test_accept_from_environ_form_encoded_multipart_value_decoded():
    env = {"QUERY_STRING": "accept=multipart%2Frelated%3B+type%3D%22application%2Fdicom%22%3B+transfer-syntax%3D*"}
    [r] = accept_from_environ(env)
    assert dict(r.params) == {"type": "application/dicom", "transfer-syntax": "*"}


def test_accept_from_environ_unencoded_plus_in_subtype_kept():
    env = {"QUERY_STRING": "accept=application/dicom+json&accept=multipart/related;+type=application/dicom%2Bxml"}
    ranges = accept_from_environ(env)
    assert [(r.type, r.get("type")) for r in ranges] == [
        ("application/dicom+json", None),
        ("multipart/related", "application/dicom+xml"),
    ]


def test_accept_from_environ_empty_query_value_falls_back_to_header():
    env = {"QUERY_STRING": "accept=&limit=10", "HTTP_ACCEPT": "image/png"}
    assert [r.type for r in accept_from_environ(env)] == ["image/png"]


def test_accept_from_environ_other_parameter_names_ignored():
    env = {"QUERY_STRING": "Accept=image/gif&accepted=image/gif&xaccept=image/gif", "HTTP_ACCEPT": "image/png"}
    assert [r.type for r in accept_from_environ(env)] == ["image/png"]


def test_accept_from_environ_unparseable_query_value_still_overrides_header():
    env = {"QUERY_STRING": "accept=garbage", "HTTP_ACCEPT": "image/png"}
    assert accept_from_environ(env) == []


def test_accept_from_environ_ohif_thumbnail_direct():
    sel = negotiate(accept_from_environ({"QUERY_STRING": "accept=image/jpeg"}), RENDERED_OFFERS)
    assert sel is not None and sel.offer.media_type == "image/jpeg"


def test_accept_from_environ_percent_encoded_parameter_name_recognised():
    env = {"QUERY_STRING": "%61ccept=image/jpeg", "HTTP_ACCEPT": "image/png"}
    assert [r.type for r in accept_from_environ(env)] == ["image/jpeg"]


def test_parse_accept_results_are_independent_between_calls():
    header = 'multipart/related; type="application/dicom", application/dicom;q=0.5'
    first = parse_accept([header])
    first.clear()
    second = parse_accept([header])
    assert [r.type for r in second] == ["multipart/related", "application/dicom"]
    second.reverse()
    assert [r.type for r in parse_accept([header])] == ["multipart/related", "application/dicom"]


def test_parse_accept_long_header_parsed_like_a_short_one():
    # Values past the cache's length limit take the uncached path; the outcome must not differ.
    padding = ", ".join(f"image/x-{n};q=0.1" for n in range(120))
    assert len(padding) > 1024
    long = parse_accept(["application/dicom+json, " + padding])
    assert long[0].type == "application/dicom+json" and len(long) == 121
    assert [r.type for r in long[1:]] == [f"image/x-{n}" for n in range(120)]


def test_parse_accept_combines_values_sorted_by_weight():
    ranges = parse_accept(["image/png;q=0.2", "image/jpeg, image/gif;q=0.5"])
    assert [(r.type, r.q) for r in ranges] == [("image/jpeg", 1.0), ("image/gif", 0.5), ("image/png", 0.2)]


# --- properties ---------------------------------------------------------------------------------------------

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~", min_size=1, max_size=12)
_value = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=20
)


@given(
    mtype=_token.filter(lambda t: t != "*"),
    subtype=_token.filter(lambda t: t != "*"),
    params=st.dictionaries(_token.filter(lambda n: n not in ("q", "type")), _value, max_size=4),
)
def test_media_type_str_round_trips_through_parse(mtype, subtype, params):
    mt = MediaType(f"{mtype}/{subtype}", params)
    assert parse_media_type(str(mt)) == mt


@given(st.text(max_size=200))
@settings(max_examples=300)
def test_parse_media_type_random_text_only_bad_request(text):
    try:
        mt = parse_media_type(text)
    except BadRequest:
        return
    assert "/" in mt.type
    parse_media_type(str(mt))


@given(st.lists(st.text(max_size=120), max_size=3))
@settings(max_examples=300)
def test_parse_accept_random_text_never_raises(values):
    ranges = parse_accept(values)
    assert all(0 < r.q <= 1 for r in ranges)
    assert [r.q for r in ranges] == sorted((r.q for r in ranges), reverse=True)
    negotiate(ranges, INSTANCE_OFFERS + FRAME_OFFERS)
