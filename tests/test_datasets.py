"""Benchmark loaders: tiny local copies in the hub's format, built in tmp dirs, load into the right Samples."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

datasets = pytest.importorskip("datasets")
Image = pytest.importorskip("PIL.Image")

from tokenprune.errors import InputError  # noqa: E402
from tokenprune.evaluation import METRICS, multiple_choice, relaxed_accuracy, vqa_accuracy  # noqa: E402
from tokenprune.evaluation.datasets import (  # noqa: E402
    BENCHMARKS,
    BenchmarkFormatError,
    Sample,
    UnknownBenchmarkError,
    build_prompt,
    get_benchmark,
    list_benchmarks,
    load_benchmark,
)

SHORT = "\nAnswer the question using a single word or phrase."
MC = "Answer with the option's letter from the given choices directly."
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def image(i: int, size=(8, 6), mode="RGB"):
    """A small solid image; colour ``i`` identifies it after a round trip."""
    return Image.new("RGB", size, COLOURS[i % len(COLOURS)]).convert(mode)


def colour(img) -> tuple[int, int, int]:
    return img.getpixel((0, 0))


def write_parquet(path, rows: dict, images: tuple[str, ...] = ("image",)) -> None:
    """Write ``rows`` as the hub does: a parquet file whose image columns carry the ``Image`` feature."""
    ds = datasets.Dataset.from_dict(rows)
    for column in images:
        ds = ds.cast_column(column, datasets.Image())
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))


def load(name, path, tmp_path, **kwargs):
    return load_benchmark(name, path=path, cache_dir=tmp_path / "cache", **kwargs)


# --- fixtures in the hub's format ---------------------------------------------------------------


@pytest.fixture
def pope_dir(tmp_path):
    root = tmp_path / "pope"
    write_parquet(
        root / "data" / "test-00000-of-00001.parquet",
        {
            "id": ["0", "1", "2", "3"],
            "question_id": ["1", "1", "1", "2"],  # restarts in each category, as in POPE's original files
            "question": [" Is there a dog in the image? ", "Is there a cat in the image?"] * 2,
            "answer": ["yes", "No", "no", "yes"],
            "image_source": ["COCO_1", "COCO_2", "COCO_3", "COCO_4"],
            "image": [image(i, mode="L" if i == 1 else "RGB") for i in range(4)],
            "category": ["adversarial", "popular", "random", "adversarial"],
        },
    )
    return root


@pytest.fixture
def gqa_dir(tmp_path):
    root = tmp_path / "gqa"
    write_parquet(
        root / "testdev_balanced_instructions" / "testdev-00000-of-00001.parquet",
        {
            "id": ["201307251", "201640614", "202225914"],
            "imageId": ["n2", "n1", "n2"],
            "question": ["Is it overcast?", "Who is wearing the dress?", "What color is the car?"],
            "answer": ["no", "woman", "red"],
            "fullAnswer": ["No, it is clear.", "The woman is wearing a dress.", "The car is red."],
        },
        images=(),
    )
    write_parquet(
        root / "testdev_balanced_images" / "testdev-00000-of-00001.parquet",
        {"id": ["n1", "n2", "n3"], "image": [image(0), image(1), image(2)]},
    )
    return root


@pytest.fixture
def textvqa_dir(tmp_path):
    root = tmp_path / "textvqa"
    write_parquet(
        root / "data" / "validation-00000-of-00001.parquet",
        {
            "image_id": ["003a8ae2ef43b901"],
            "question_id": [34602],
            "question": ["what is the BRAND of this camera?"],
            "answers": [["nous les gosses", "dakota", "clos culombu"] + ["dakota"] * 7],
            "ocr_tokens": [["dakota", "digital"]],
            "image": [image(3)],
        },
    )
    # A train file in the same directory must not be read for the validation split.
    write_parquet(
        root / "data" / "train-00000-of-00001.parquet",
        {
            "image_id": ["x"],
            "question_id": [1],
            "question": ["q"],
            "answers": [["a"] * 10],
            "ocr_tokens": [[]],
            "image": [image(0)],
        },
    )
    return root


MMMU_ROWS = {
    "id": ["validation_Art_1", "validation_Math_2", "validation_Physics_3"],
    "question": [
        "Which painting, <image 1> or the one in the options, is older?",
        "What is the area of the triangle in <image 1>?",
        "<image 2> and <image 1> show the same circuit. Which is right?",
    ],
    "options": ["['<image 2>', 'Neither', 'Both']", "[]", "['The first', \"The second's\"]"],
    "answer": ["A", "12", "B"],
    "question_type": ["multiple-choice", "open", "multiple-choice"],
    "subfield": ["Art History", "Geometry", "Electronics"],
    "img_type": ["['Paintings']", "['Diagrams']", "['Diagrams']"],
    "image_1": [image(0), image(1), image(2)],
    "image_2": [image(3), None, image(4)],
    "image_3": [image(4), None, None],
}


@pytest.fixture
def mmmu_dir(tmp_path):
    root = tmp_path / "mmmu"
    write_parquet(root / "validation.parquet", MMMU_ROWS, images=("image_1", "image_2", "image_3"))
    return root


@pytest.fixture
def ai2d_dir(tmp_path):
    root = tmp_path / "ai2d"
    write_parquet(
        root / "data" / "test-00000-of-00001.parquet",
        {
            "question": ["Which stage comes after the egg?", "What does the arrow point to?"],
            "options": [["adult", "pupa", "larva", "nymph"], ["sun", "moon"]],
            "answer": ["2", "0"],
            "image": [image(1), image(2)],
        },
    )
    return root


@pytest.fixture
def chartqa_jsonl(tmp_path):
    """ChartQA as JSON lines whose image cells are file paths relative to the file."""
    root = tmp_path / "chartqa"
    (root / "images").mkdir(parents=True)
    rows = [
        {"type": "human_test", "question": "How many bars exceed 20?", "answer": "3", "image": "images/0.png"},
        {"type": "augmented_test", "question": "What is the peak value?", "answer": "47.5", "image": "images/1.png"},
    ]
    for i in range(2):
        image(i + 2).save(root / "images" / f"{i}.png")
    with (root / "test.jsonl").open("w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return root


# --- each benchmark -----------------------------------------------------------------------------


def test_pope_loads_all_categories_by_default(pope_dir, tmp_path):
    samples = load("pope", pope_dir, tmp_path)
    assert [s.id for s in samples] == ["0", "1", "2", "3"]  # the hub's unique id, not question_id
    first, second = samples[0], samples[1]
    assert first.benchmark == "pope" and first.metric == "pope_f1"
    assert first.answers == ("yes",) and first.label is True
    assert second.answers == ("no",) and second.label is False  # "No" normalised
    assert first.question == " Is there a dog in the image? "
    assert first.prompt == "Is there a dog in the image?" + SHORT  # lmms-eval strips the question
    assert first.extra["category"] == "adversarial" and first.extra["image_source"] == "COCO_1"
    assert first.choices == ()
    assert len(first.images) == 1 and first.images[0].mode == "RGB" and first.images[0].size == (8, 6)
    assert colour(first.images[0]) == COLOURS[0]
    assert second.images[0].mode == "RGB"  # a greyscale image is converted


@pytest.mark.parametrize(("split", "ids"), [("adversarial", ["0", "3"]), ("popular", ["1"]), ("random", ["2"])])
def test_pope_split_is_a_category(pope_dir, tmp_path, split, ids):
    samples = load("pope", pope_dir, tmp_path, split=split)
    assert [s.id for s in samples] == ids
    assert {s.extra["category"] for s in samples} == {split}


def test_pope_limit_applies_after_the_category_filter(pope_dir, tmp_path):
    assert [s.id for s in load("pope", pope_dir, tmp_path, split="adversarial", limit=1)] == ["0"]


def test_pope_unknown_split(pope_dir, tmp_path):
    with pytest.raises(InputError, match="'random', 'popular', 'adversarial'; got 'test'"):
        load("pope", pope_dir, tmp_path, split="test")


def test_gqa_joins_images_by_image_id(gqa_dir, tmp_path):
    samples = load("gqa", gqa_dir, tmp_path)
    assert [s.id for s in samples] == ["201307251", "201640614", "202225914"]
    assert [colour(s.images[0]) for s in samples] == [COLOURS[1], COLOURS[0], COLOURS[1]]
    s = samples[1]
    assert s.answers == ("woman",) and s.metric == "exact_match"
    assert s.prompt == "Who is wearing the dress?" + SHORT
    assert s.extra == {"imageId": "n1", "fullAnswer": "The woman is wearing a dress."}


def test_gqa_unknown_image_id(gqa_dir, tmp_path):
    write_parquet(
        gqa_dir / "testdev_balanced_instructions" / "testdev-00000-of-00001.parquet",
        {"id": ["1"], "imageId": ["missing"], "question": ["q?"], "answer": ["a"], "fullAnswer": ["a"]},
        images=(),
    )
    with pytest.raises(BenchmarkFormatError, match="imageId 'missing' is not in the GQA images config"):
        load("gqa", gqa_dir, tmp_path)


def test_textvqa_ten_answers_and_capitalised_prompt(textvqa_dir, tmp_path):
    (s,) = load("textvqa", textvqa_dir, tmp_path)
    assert s.id == "34602"  # an int id becomes a string
    assert len(s.answers) == 10 and s.answers[0] == "nous les gosses"
    assert s.metric == "vqa_accuracy"
    # str.capitalize lower-cases the rest, as lmms-eval's textvqa_doc_to_text does.
    assert s.prompt == "What is the brand of this camera?" + SHORT
    assert s.extra["ocr_tokens"] == ["dakota", "digital"]
    assert colour(s.images[0]) == COLOURS[3]
    assert vqa_accuracy("Dakota", list(s.answers)) == 1.0


def test_mmmu_choices_images_and_prompts(mmmu_dir, tmp_path):
    mc, open_, two = load("mmmu", mmmu_dir, tmp_path)
    assert mc.id == "validation_Art_1" and mc.metric == "multiple_choice"
    assert mc.choices == ("<image 2>", "Neither", "Both") and mc.answers == ("A",)
    # <image 1> in the question and <image 2> in an option: both images, in number order; image_3 unused.
    assert [colour(i) for i in mc.images] == [COLOURS[0], COLOURS[3]]
    assert mc.prompt == (
        "Which painting, <image 1> or the one in the options, is older?\nA. <image 2>\nB. Neither\nC. Both\n\n" + MC
    )
    assert open_.choices == () and open_.metric == "exact_match" and open_.answers == ("12",)
    assert open_.prompt == "What is the area of the triangle in <image 1>?\n\n" + SHORT[1:]
    assert len(open_.images) == 1
    # Images sorted by number, whatever order the text names them in.
    assert [colour(i) for i in two.images] == [COLOURS[2], COLOURS[4]]
    assert two.choices == ("The first", "The second's")
    assert two.extra["question_type"] == "multiple-choice" and two.extra["subfield"] == "Electronics"
    assert multiple_choice("(B)", list(two.choices), two.answer) == 1.0


def test_ai2d_index_answer_becomes_a_letter(ai2d_dir, tmp_path):
    first, second = load("ai2d", ai2d_dir, tmp_path)
    assert first.id == "ai2d-0" and second.id == "ai2d-1"
    assert first.choices == ("adult", "pupa", "larva", "nymph")
    assert first.answers == ("C",) and first.extra["answer_index"] == 2
    assert first.metric == "multiple_choice"
    assert first.prompt == "Which stage comes after the egg?\nA. adult\nB. pupa\nC. larva\nD. nymph\n" + MC
    assert second.prompt == "What does the arrow point to?\nA. sun\nB. moon\n" + MC
    assert multiple_choice("C", list(first.choices), first.answer) == 1.0


def test_chartqa_from_json_lines_with_relative_image_paths(chartqa_jsonl, tmp_path):
    samples = load("chartqa", chartqa_jsonl, tmp_path)
    assert [s.id for s in samples] == ["chartqa-0", "chartqa-1"]
    s = samples[1]
    assert s.answers == ("47.5",) and s.metric == "relaxed_accuracy"
    assert s.prompt == "What is the peak value?" + SHORT
    assert s.extra == {"type": "augmented_test"}
    assert colour(s.images[0]) == COLOURS[3]
    assert relaxed_accuracy("48", s.answer) == 1.0


def test_a_single_file_is_the_split(chartqa_jsonl, tmp_path):
    assert len(load("chartqa", chartqa_jsonl / "test.jsonl", tmp_path)) == 2


# --- common behaviour ---------------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "n"), [(0, 0), (1, 1), (2, 2), (10, 4)])
def test_limit(pope_dir, tmp_path, limit, n):
    samples = load("pope", pope_dir, tmp_path, limit=limit)
    assert len(samples) == n
    assert [s.id for s in samples] == ["0", "1", "2", "3"][:n]


@pytest.mark.parametrize("limit", [-1, 1.5, True, "3"])
def test_bad_limit(pope_dir, tmp_path, limit):
    with pytest.raises(InputError, match="limit must be None or an int >= 0"):
        load("pope", pope_dir, tmp_path, limit=limit)


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(UnknownBenchmarkError) as info:
        load_benchmark("pop")
    assert isinstance(info.value, LookupError) and isinstance(info.value, InputError)
    message = str(info.value)
    assert "Did you mean 'pope'?" in message
    assert "Available: ai2d, chartqa, gqa, mmmu, pope, scenes, textvqa" in message


def test_names_are_case_insensitive():
    assert get_benchmark("ChartQA").name == "chartqa"
    assert list_benchmarks() == sorted(BENCHMARKS)


def test_every_metric_is_a_known_metric():
    assert {spec.metric for spec in BENCHMARKS.values()} <= set(METRICS)
    assert "exact_match" in METRICS  # MMMU open questions


def test_unknown_family(pope_dir, tmp_path):
    with pytest.raises(InputError, match="unknown model family 'qwen'; expected one of llava, qwen2_5_vl"):
        load("pope", pope_dir, tmp_path, family="qwen")


def test_families_share_lmms_evals_default_prompts(ai2d_dir, tmp_path):
    llava = load("ai2d", ai2d_dir, tmp_path)
    qwen = load("ai2d", ai2d_dir, tmp_path, family="qwen2_5_vl")
    assert [s.prompt for s in llava] == [s.prompt for s in qwen]
    assert build_prompt(llava[0], "qwen2_5_vl") == llava[0].prompt == llava[0].with_prompt("qwen2_5_vl").prompt


@pytest.mark.parametrize(
    ("name", "question", "choices", "expected"),
    [
        ("pope", "Is there a car in the image?", (), "Is there a car in the image?" + SHORT),
        ("gqa", "Is the sky blue?", (), "Is the sky blue?" + SHORT),
        ("chartqa", "What is the value of Japan?", (), "What is the value of Japan?" + SHORT),
        ("textvqa", "what does the SIGN say?", (), "What does the sign say?" + SHORT),
        ("ai2d", "Which is a producer?", ("grass", "hawk"), "Which is a producer?\nA. grass\nB. hawk\n" + MC),
        ("mmmu", "Pick one.", ("x", "y", "z"), "Pick one.\nA. x\nB. y\nC. z\n\n" + MC),
        ("mmmu", "How many?", (), "How many?\n\n" + SHORT[1:]),
    ],
)
def test_hand_written_prompts(name, question, choices, expected):
    sample = Sample("1", name, question, "", ("a",), "exact_match", choices=choices)
    assert build_prompt(sample) == expected
    assert build_prompt(sample, family="qwen2_5_vl") == expected


def test_sample_is_frozen_and_hashable():
    sample = Sample("1", "pope", "q", "p", ["yes"], "pope_f1", images=[image(0)], extra={"category": "random"})
    assert sample.answers == ("yes",) and isinstance(sample.images, tuple)
    with pytest.raises(AttributeError):
        sample.id = "2"
    with pytest.raises(TypeError):
        sample.extra["category"] = "popular"
    assert hash(sample) == hash(Sample("1", "pope", "q", "p", ("yes",), "pope_f1"))


# --- malformed data -----------------------------------------------------------------------------


def test_samples_that_share_an_id_are_an_error_not_one_record(tmp_path):
    """Without the hub's `id`, POPE falls back to question_id, which repeats across categories: refused."""
    rows = {
        "question_id": ["1", "1"],
        "question": ["Is there a dog?", "Is there a cat?"],
        "answer": ["yes", "no"],
        "image": [image(0), image(1)],
        "category": ["adversarial", "popular"],
    }
    write_parquet(tmp_path / "pope" / "data" / "test-00000-of-00001.parquet", rows)
    with pytest.raises(BenchmarkFormatError, match=r"sample id '1' is used by rows 0 and 1"):
        load("pope", tmp_path / "pope", tmp_path)
    assert [s.id for s in load("pope", tmp_path / "pope", tmp_path, split="popular")] == ["1"]  # alone: fine


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_an_empty_local_file_says_so(tmp_path, suffix):
    path = tmp_path / "textvqa" / f"validation{suffix}"
    path.parent.mkdir(parents=True)
    if suffix == ".jsonl":
        path.write_text("")
    else:
        write_parquet(path, {"question_id": [], "question": [], "answers": [], "image": []})
    with pytest.raises(BenchmarkFormatError, match=r"benchmark 'textvqa': .*(empty|holds no rows)"):
        load("textvqa", tmp_path / "textvqa", tmp_path)


def test_missing_column(tmp_path):
    write_parquet(tmp_path / "d" / "test.parquet", {"question": ["q"], "image": [image(0)]})
    with pytest.raises(BenchmarkFormatError, match=r"missing column\(s\) 'answer'.*the data has question, image"):
        load("chartqa", tmp_path / "d", tmp_path)


def test_bad_pope_answer(pope_dir, tmp_path):
    write_parquet(
        pope_dir / "data" / "test-00000-of-00001.parquet",
        {
            "question_id": ["7"],
            "question": ["q?"],
            "answer": ["maybe"],
            "image": [image(0)],
            "category": ["random"],
        },
    )
    with pytest.raises(BenchmarkFormatError, match=r"pope row 0 .*answer must be 'yes' or 'no'; got 'maybe'"):
        load("pope", pope_dir, tmp_path)


def test_ai2d_answer_out_of_range(tmp_path):
    write_parquet(
        tmp_path / "d" / "test.parquet",
        {"question": ["q"], "options": [["a", "b"]], "answer": ["2"], "image": [image(0)]},
    )
    with pytest.raises(BenchmarkFormatError, match=r"option index in \[0, 1\]; got '2'"):
        load("ai2d", tmp_path / "d", tmp_path)


def test_mmmu_missing_image_column(tmp_path):
    rows = {k: v[1:2] for k, v in MMMU_ROWS.items() if k not in ("image_2", "image_3")}
    rows["question"] = ["Compare <image 1> with <image 2>."]
    write_parquet(tmp_path / "d" / "validation.parquet", rows, images=("image_1",))
    with pytest.raises(BenchmarkFormatError, match="names <image 2> but column 'image_2' is empty or missing"):
        load("mmmu", tmp_path / "d", tmp_path)


def test_mmmu_bad_options_and_answer(tmp_path):
    rows = {k: v[:1] for k, v in MMMU_ROWS.items()}
    write_parquet(
        tmp_path / "a" / "validation.parquet", {**rows, "options": ["not a list"]}, images=("image_1", "image_2")
    )
    with pytest.raises(BenchmarkFormatError, match="'options' must be a list of strings"):
        load("mmmu", tmp_path / "a", tmp_path)
    write_parquet(tmp_path / "b" / "validation.parquet", {**rows, "answer": ["E"]}, images=("image_1", "image_2"))
    with pytest.raises(BenchmarkFormatError, match="answer must be a letter A-C for 3 options; got 'E'"):
        load("mmmu", tmp_path / "b", tmp_path)


def test_unreadable_image(chartqa_jsonl, tmp_path):
    (chartqa_jsonl / "images" / "0.png").write_bytes(b"not a png")
    with pytest.raises(BenchmarkFormatError, match=r"chartqa row 0 .*cannot read the image"):
        load("chartqa", chartqa_jsonl, tmp_path)


def test_no_files_for_the_split(textvqa_dir, tmp_path):
    with pytest.raises(InputError, match="no files for split 'test'"):
        load("textvqa", textvqa_dir, tmp_path, split="test")
    with pytest.raises(InputError, match="does not exist"):
        load("textvqa", tmp_path / "nowhere", tmp_path)


# --- the hub code path, without the network ------------------------------------------------------


def test_hub_loading_uses_lmms_evals_ids(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, *, split, cache_dir=None):
        calls.append((path, name, split))
        if name == "testdev_balanced_images":
            return datasets.Dataset.from_dict({"id": ["n1"], "image": [image(0)]})
        return datasets.Dataset.from_dict(
            {"id": ["q1"], "imageId": ["n1"], "question": ["Is it red?"], "answer": ["yes"], "fullAnswer": ["Yes."]}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (s,) = load_benchmark("gqa")
    assert calls == [
        ("lmms-lab/GQA", "testdev_balanced_instructions", "testdev"),
        ("lmms-lab/GQA", "testdev_balanced_images", "testdev"),
    ]
    assert s.prompt == "Is it red?" + SHORT and colour(s.images[0]) == COLOURS[0]


def test_hub_ids():
    assert {name: (spec.hub_id, spec.split) for name, spec in BENCHMARKS.items()} == {
        "pope": ("lmms-lab/POPE", "all"),
        "gqa": ("lmms-lab/GQA", "testdev"),
        "textvqa": ("lmms-lab/textvqa", "validation"),
        "mmmu": ("lmms-lab/MMMU", "validation"),
        "ai2d": ("lmms-lab/ai2d", "test"),
        "chartqa": ("lmms-lab/ChartQA", "test"),
        "scenes": (None, "test"),  # generated by tokenprune.scenes, not loaded
    }


def test_import_tokenprune_stays_light():
    code = (
        "import sys, tokenprune, tokenprune.evaluation.datasets, tokenprune.evaluation.prompts; "
        "print('datasets' in sys.modules, 'pyarrow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
