"""What compare runs, without a model: method specs, keep ratios, benchmark choices, the scenes benchmark."""

import re

import pytest

from tokenprune.errors import InputError, MethodParameterError, UnknownMethodError
from tokenprune.evaluation import exact_match_any
from tokenprune.evaluation.datasets import UnknownBenchmarkError, load_benchmark
from tokenprune.evaluation.specs import MethodConfig, parse_benchmarks, parse_keeps, parse_methods, parse_value


def test_a_piece_with_equals_and_no_colon_belongs_to_the_method_before_it():
    methods = parse_methods("zspa:core_ratio=0.2,pooling=max,divprune")
    assert [(m.name, dict(m.given)) for m in methods] == [
        ("zspa", {"core_ratio": 0.2, "pooling": "max"}),
        ("divprune", {}),
    ]
    assert [str(m) for m in methods] == ["zspa:core_ratio=0.2,pooling=max", "divprune"]
    assert dict(methods[0].params) == {"core_ratio": 0.2, "pooling": "max"}


def test_the_same_method_twice_with_different_parameters_is_two_configurations():
    methods = parse_methods("zspa, zspa:core_ratio=0.5 ,random:seed=3,random:seed=4")
    assert [(m.name, m.params.get("core_ratio"), m.params.get("seed")) for m in methods] == [
        ("zspa", 0.2, None),
        ("zspa", 0.5, None),
        ("random", None, 3),
        ("random", None, 4),
    ]
    assert len(set(methods)) == 4


def test_equal_full_parameters_are_one_configuration_and_none_is_implicit():
    # the defaults are filled in, so writing the default value out changes nothing
    methods = parse_methods("zspa,none,zspa:core_ratio=0.2,pooling=mean,divprune,divprune")
    assert [str(m) for m in methods] == ["zspa", "divprune"]
    assert MethodConfig("zspa", {}, {"core_ratio": 0.2}) == MethodConfig(
        "zspa", {"core_ratio": 0.2}, {"core_ratio": 0.2}
    )


def test_positions_is_a_harness_setting_not_a_method_parameter():
    methods = parse_methods("zspa,zspa:positions=original,fastv:layer=2,positions=original")
    assert [str(m) for m in methods] == ["zspa", "zspa:positions=original", "fastv:layer=2,positions=original"]
    assert [m.positions for m in methods] == [None, "original", "original"]
    assert methods[0].params == methods[1].params and "positions" not in methods[1].given
    assert methods[0] != methods[1]
    defaulted = parse_methods("zspa,divprune:positions=contiguous", positions="original")
    assert [m.positions for m in defaulted] == ["original", "contiguous"]  # a spec's own setting wins
    with pytest.raises(InputError, match=r"positions of 'zspa' must be one of \['contiguous', 'original'\]"):
        parse_methods("zspa:positions=grid")
    with pytest.raises(InputError, match="prunes inside the language model"):
        parse_methods("fastv", positions="contiguous")


def test_a_text_parameter_takes_the_text_as_written_so_pooling_none_is_not_the_default():
    """``none`` is None (the default) only for parameters whose default is not text: zspa's ``pooling=none`` is
    the pooling called "none" (each visual token scored by its best prompt token), not mean pooling."""
    (method,) = parse_methods("zspa:pooling=none")
    assert method.params["pooling"] == "none" and str(method) == "zspa:pooling=none"
    assert [m.params["pooling"] for m in parse_methods("zspa:pooling=max|none|'mean'")] == ["max", "none", "mean"]
    assert parse_methods("fastv:layer=none")[0].params["layer"] == 2  # not text: None takes the default
    with pytest.raises(MethodParameterError, match="pooling must be one of 'mean', 'max', 'none'; got '1'"):
        parse_methods("zspa:pooling=1")


def test_values_separated_by_a_bar_are_a_sweep_over_every_combination_in_the_order_written():
    methods = parse_methods("zspa:core_ratio=0.1|0.4|0.2,pooling=mean|max,divprune")
    assert [str(m) for m in methods] == [
        "zspa:core_ratio=0.1,pooling=mean",
        "zspa:core_ratio=0.1,pooling=max",
        "zspa:core_ratio=0.4,pooling=mean",
        "zspa:core_ratio=0.4,pooling=max",
        "zspa:core_ratio=0.2,pooling=mean",  # zspa's defaults: the same configuration as plain zspa
        "zspa:core_ratio=0.2,pooling=max",
        "divprune",
    ]
    assert [m.params["core_ratio"] for m in methods[:6]] == [0.1, 0.1, 0.4, 0.4, 0.2, 0.2]
    assert not any(m.optional for m in methods)
    assert parse_methods("zspa,zspa:core_ratio=0.2|0.5") == parse_methods("zspa,zspa:core_ratio=0.5")  # one kept
    assert [str(m) for m in parse_methods("zspa:core_ratio=0,zspa:core_ratio=0.0")] == ["zspa:core_ratio=0"]  # 0 == 0.0
    positions = parse_methods("zspa:positions=original|contiguous")
    assert [m.positions for m in positions] == ["original", "contiguous"]
    with pytest.raises(MethodParameterError, match=re.escape("'mean|max'")):  # a quoted value is one value, not split
        parse_methods("zspa:pooling='mean|max'")
    # each alternative is checked as a value of its own, by the method
    with pytest.raises(MethodParameterError, match="method 'zspa'"):
        parse_methods("zspa:core_ratio=0.1|2")
    with pytest.raises(InputError, match="prunes inside the language model"):
        parse_methods("fastv:positions=original|contiguous")


def test_all_and_patterns_are_every_registered_method_they_match_that_can_run_in_a_model():
    import tokenprune

    everything = parse_methods("all")
    in_model = [name for name in tokenprune.list_methods() if name != "attention"]  # its scores come from a caller
    assert [m.name for m in everything] == in_model and "zspa" in in_model and "fastv" in in_model
    assert all(m.optional and not m.given for m in everything)
    assert [dict(m.params) for m in everything] == [dict(tokenprune.create_method(n).params) for n in in_model]
    assert parse_methods("all") == parse_methods("*")
    assert [m.name for m in parse_methods("d*,[rs]t*")] == ["divprune", "stride"]
    # named explicitly too: one configuration, no longer optional, wherever it was named
    mixed = parse_methods("zspa:core_ratio=0.5,div*,divprune,all")
    assert [(m.name, m.optional) for m in mixed[:2]] == [("zspa", False), ("divprune", False)]
    assert {m.name: m.optional for m in mixed[2:]}["zspa"] is True  # zspa's defaults: not the one named
    assert [m.positions for m in parse_methods("all", positions="original")] == ["original"] * len(in_model)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("zspa:core_ratio=0.1||0.2", "expected a value, or alternatives separated by '|'"),
        ("zspa:core_ratio=0.1|", "expected a value, or alternatives"),
        ("zspa:core_ratio=0.1|0.1", "lists a value twice"),
        ("zspa:core_ratio=1|1.0", "lists a value twice"),
        ("all:core_ratio=0.1", "method pattern 'all' takes no parameters"),
        ("zs*:pooling=max", "takes no parameters"),
        ("zspa|divprune", "separate methods with ','"),
        ("nothing*", "matches no registered method that can run inside a model; registered: .*zspa"),
        ("attention,att*", "matches no registered method that can run inside a model"),
    ],
)
def test_bad_sweeps_and_patterns_say_what_was_expected(text, message):
    with pytest.raises(InputError, match=message):
        parse_methods(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("-2", -2),
        ("0.25", 0.25),
        ("1e-3", 0.001),
        ("true", True),
        ("False", False),
        ("none", None),
        ("null", None),
        ("max", "max"),
        ("'3'", "3"),
        ('"a b"', "a b"),
        ("nan", "nan"),
    ],
)
def test_values_are_int_float_bool_none_or_text(text, value):
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("zpsa", UnknownMethodError, "unknown method 'zpsa'. Did you mean 'zspa'"),
        ("nosuch", UnknownMethodError, "Available: .*divprune.*zspa"),
        ("zspa:core=0.2", MethodParameterError, "no parameter 'core'.*Valid parameters: core_ratio=0.2"),
        ("zspa:core_ratio=2", MethodParameterError, "method 'zspa'"),
        ("core_ratio=0.2,zspa", InputError, "comes before any method"),
        ("zspa,,divprune", InputError, "empty method spec"),
        ("zspa:core_ratio", InputError, "expected key=value"),
        ("zspa:core_ratio=0.1,core_ratio=0.3", InputError, "given twice"),
        ("none:x=1", InputError, "takes no parameters"),
        ("", InputError, "comma-separated list of methods"),
    ],
)
def test_bad_method_specs_say_what_exists(text, error, message):
    with pytest.raises(error, match=message):
        parse_methods(text)


def test_keeps_are_ratios_in_the_unit_interval():
    assert parse_keeps("0.1,0.3,0.5") == (0.1, 0.3, 0.5)
    assert parse_keeps("0.5, 0.1,0.5") == (0.5, 0.1)
    for bad in ("0", "1.5", "-0.1", "a", "0.1,,0.2"):
        with pytest.raises(InputError, match=r"keep ratios must be numbers in \(0, 1\]"):
            parse_keeps(bad)


def test_benchmarks_are_names_or_name_equals_path():
    assert parse_benchmarks("scenes") == [("scenes", None)]
    assert parse_benchmarks("POPE=/data/pope, gqa,scenes,gqa") == [
        ("pope", "/data/pope"),
        ("gqa", None),
        ("scenes", None),
    ]
    with pytest.raises(UnknownBenchmarkError, match=r"unknown benchmark 'pop'\. Did you mean 'pope'.*Available: ai2d"):
        parse_benchmarks("scenes,pop")
    with pytest.raises(InputError, match="NAME or NAME=PATH"):
        parse_benchmarks("pope=")


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("Two", ["2", "two"], 1.0),
        ("2.", ["2", "two"], 1.0),
        ("three", ["2", "two"], 0.0),
        ("A", ["A", "6"], 1.0),
        ("a", ["A", "6"], 1.0),
        ("", ["A", "6"], 0.0),  # "A" normalises to "" (an article): an empty answer must not match it
        ("the", ["A", "6"], 0.0),
        ("6", ["A", "6"], 1.0),
        ("The blue hexagon", ["blue hexagon", "hexagon"], 1.0),
        ("blue", ["blue hexagon", "hexagon"], 0.0),
        ("cake", ["CAKE", "cake"], 1.0),
    ],
)
def test_exact_match_any(prediction, answers, expected):
    assert exact_match_any(prediction, answers) == expected


def test_the_scenes_benchmark_is_generated_from_the_seed_with_families_kept():
    samples = load_benchmark("scenes", limit=12, seed=5)
    assert [s.id for s in samples] == [f"scenes-test-5-{i}" for i in range(12)]
    families = [s.extra["family"] for s in samples]
    assert families[:6] == ["existence", "attribute", "counting", "spatial", "text", "multiple_choice"]
    assert families[6:] == families[:6]
    assert all(s.metric == "exact_match_any" and s.prompt == s.question and len(s.images) == 1 for s in samples)
    mc = samples[5]
    assert mc.answers[0] in "ABCD" and len(mc.choices) == 4 and mc.prompt.count("\n") == 5
    assert samples[0].images[0].size == (336, 336)
    other = load_benchmark("scenes", limit=12, seed=6)
    assert [s.question for s in other] != [s.question for s in samples]
    assert [s.question for s in load_benchmark("scenes", limit=12, seed=5)] == [s.question for s in samples]


def test_the_scenes_benchmark_is_not_loaded_from_a_path():
    with pytest.raises(InputError, match="generated, not loaded"):
        load_benchmark("scenes", path="/data/scenes", limit=1)
