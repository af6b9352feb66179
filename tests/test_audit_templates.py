"""Property tests: templates render and parse both ways; codecs compare by meaning, not by bytes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekit.audit.codecs import CODECS, CodecError, canonical, compare, convert, get_codec
from statekit.audit.sources.files import _strip_suffix
from statekit.audit.templates import compile_template, decode_all, transform_all
from statekit.errors import ConfigError
from statekit.profiles.evolution.profile import fix_file_name, unfix_file_name

_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(_text.filter(lambda s: ":" not in s), _text)
def test_redis_key_and_field_round_trip(id_: str, key: str) -> None:
    tpl = compile_template("{prefix}:instance:{id}:{key}", constants={"prefix": "evo"})
    name = tpl.render({"id": id_, "key": key})
    assert name.startswith("evo:instance:")
    assert tpl.parse(name) == {"id": id_, "key": key}


@given(_text.filter(lambda s: "/" not in s), _text.filter(lambda s: "/" not in s))
def test_path_round_trip(id_: str, key: str) -> None:
    tpl = compile_template("{id}/{key}.json", patterns={"key": ".+"})
    assert tpl.parse(tpl.render({"id": id_, "key": key})) == {"id": id_, "key": key}


@given(_text)
def test_transformed_variable_parses_to_the_transformed_name(key: str) -> None:
    tpl = compile_template("{id}/{key|fix}.json", functions={"fix": fix_file_name}, patterns={"key": ".+"})
    name = tpl.render({"id": "abc", "key": key})
    assert "/" not in name[len("abc/") :]
    assert tpl.parse(name) == {"id": "abc", "key": fix_file_name(key)}
    assert fix_file_name(fix_file_name(key)) == fix_file_name(key)  # idempotent, so it can normalise both sides


def test_fix_file_name_matches_evolution_examples() -> None:
    assert fix_file_name("sender-key-120363041234567890@g.us::5511999999999::0") == (
        "sender-key-120363041234567890@g.us--5511999999999--0"
    )
    assert fix_file_name("app-state-sync-key-AAAAAB/x") == "app-state-sync-key-AAAAAB__x"
    assert unfix_file_name("sender-key-1@g.us--55--0") == "sender-key-1@g.us::55::0"


@given(_text.filter(lambda s: ":" not in s))
def test_names_that_do_not_fit_do_not_parse(junk: str) -> None:
    tpl = compile_template("evolution:instance:{id}", patterns={"id": "[^:]+"})
    assert tpl.parse(f"evolution:instance:{junk}:extra") is None
    assert tpl.parse(f"other:{junk}") is None


def test_render_refuses_values_that_would_not_parse_back() -> None:
    tpl = compile_template("{id}:{key}")
    with pytest.raises(ValueError):
        tpl.render({"id": "a:b", "key": "c"})


@pytest.mark.parametrize("bad", ["{id", "{id}{key}", "{id}/{id}", "{key|nope}"])
def test_malformed_templates_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        compile_template(bad)


def test_glob_escapes_redis_pattern_characters() -> None:
    assert compile_template("a*b:{id}").glob() == "a\\*b:*"


@settings(max_examples=200)
@given(_json)
def test_json_string_is_json_wrapped_once_more(obj: object) -> None:
    text = json.dumps(obj, separators=(",", ":")).encode()
    double = json.dumps(text.decode()).encode()
    assert compare(text, get_codec("json"), double, get_codec("json-string")).equal
    assert convert(double, get_codec("json-string"), get_codec("json")) == text
    assert convert(text, get_codec("json"), get_codec("json-string")) == double


@settings(max_examples=200)
@given(st.dictionaries(st.text(max_size=8), _json, min_size=2, max_size=6))
def test_key_order_and_whitespace_never_count(obj: dict[str, object]) -> None:
    a = json.dumps(obj).encode()
    b = json.dumps(dict(reversed(list(obj.items()))), indent=2).encode()
    assert compare(a, get_codec("json"), b, get_codec("json")).equal
    assert canonical(get_codec("json"), a) == canonical(get_codec("json"), b)


@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(), min_size=1), st.sampled_from("abcdef"))
def test_differing_field_is_named_by_its_json_path(obj: dict[str, int], key: str) -> None:
    other = dict(obj)
    other[key] = obj.get(key, 0) + 1
    result = compare(json.dumps(obj).encode(), get_codec("json"), json.dumps(other).encode(), get_codec("json"))
    assert not result.equal
    assert result.paths == (f"$.{key}",)


@given(st.binary(max_size=64))
def test_base64_and_raw_round_trip(data: bytes) -> None:
    b64 = convert(data, get_codec("raw"), get_codec("base64"))
    assert convert(b64, get_codec("base64"), get_codec("raw")) == data
    assert compare(data, get_codec("raw"), b64, get_codec("base64")).equal


@pytest.mark.parametrize("name,value", [("json-string", b'{"a":1}'), ("json", b"{nope"), ("base64", b"!!")])
def test_values_that_do_not_decode_raise_codec_error(name: str, value: bytes) -> None:
    with pytest.raises(CodecError):
        canonical(CODECS[name], value)


@given(st.lists(st.binary(max_size=12), max_size=30))
def test_decoding_names_in_one_pass_is_decoding_each(raw: list[bytes]) -> None:
    # NULs inside names and invalid UTF-8 next to the separator included.
    assert decode_all(raw) == [r.decode("utf-8", "surrogateescape") for r in raw]


@given(st.lists(st.text(alphabet=st.sampled_from("ab:/-_\x00é"), max_size=10), max_size=30))
def test_a_whole_list_transform_is_the_per_name_transform(names: list[str]) -> None:
    assert transform_all(fix_file_name, names) == [fix_file_name(n) for n in names]
    assert transform_all(unfix_file_name, names) == [unfix_file_name(n) for n in names]


@given(
    st.lists(st.text(alphabet=st.sampled_from("ab.jsonx"), max_size=8), max_size=20),
    st.sampled_from([".json", "n", "x.j"]),
)
def test_stripping_a_suffix_from_a_whole_folder_is_stripping_each(names: list[str], suffix: str) -> None:
    matched = [n for n in names if n.endswith(suffix) and len(n) > len(suffix)]
    assert _strip_suffix(names, suffix) == (matched, [n[: -len(suffix)] for n in matched])
