"""The prompt the selector sees: every text token, or only the question inside a chat template."""

import pytest
import torch

import tokenprune
from tokenprune.integrations import get_adapter
from tokenprune.integrations.base import Layout
from tokenprune.integrations.prompt import question_tokens
from tokenprune.testing.models import IMAGE_TOKEN, tiny_llava, tiny_llava_inputs, tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer built offline, with a LLaVA-1.5-style chat template."""
    return tiny_tokenizer()


def ids_of(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<unk>") not in ids
    return ids


def test_question_tokens_mark_only_the_question(tokenizer):
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the cube?"}]}]
    text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    mask = question_tokens(tokenizer, image_token_id=IMAGE_TOKEN)(ids, torch.ones_like(ids))
    marked = ids[mask].tolist()
    assert [i for i in marked if i != tokenizer.convert_tokens_to_ids("\n")] == ids_of(
        tokenizer, "what colour is the cube?"
    )
    assert (
        tokenizer.convert_tokens_to_ids("ASSISTANT") not in marked
        and tokenizer.convert_tokens_to_ids("USER") not in marked
    )


def test_rows_outside_the_template_fall_back_to_all_text_with_a_warning(tokenizer):
    ids = torch.tensor([[5, 6, 7]])
    with pytest.warns(UserWarning, match=r"rows \[0\] do not end with the chat template"):
        mask = question_tokens(tokenizer, image_token_id=IMAGE_TOKEN)(ids, torch.ones_like(ids))
    assert mask.all()


def test_the_prompt_choice_changes_what_a_prompt_aware_method_keeps():
    """Scoring by role tokens too, or by the question alone, is a real difference for zspa."""
    model = tiny_llava(seed=0)
    role, question, assistant = [11, 12], [40, 41, 42, 43], [13, 12]
    inputs = tiny_llava_inputs(model, [(role, [*question, *assistant])])
    ids = inputs["input_ids"][0].tolist()
    start = len(ids) - len(question) - len(assistant)

    def only_question(input_ids, attention_mask):
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        mask[:, start : start + len(question)] = True
        return mask

    with tokenprune.apply(model, "relevance", budget=4) as everything:
        model.generate(**inputs, max_new_tokens=1)
    with tokenprune.apply(model, "relevance", budget=4, prompt_tokens=only_question) as restricted:
        model.generate(**inputs, max_new_tokens=1)
    assert not torch.equal(everything.last.kept[0], restricted.last.kept[0])

    # the restricted prompt is exactly the question's embeddings: relevance to their mean, computed by hand
    features = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output[0]
    query = model.get_input_embeddings()(torch.tensor(question)).mean(0)
    scores = torch.nn.functional.cosine_similarity(features, query[None], dim=-1)
    assert restricted.last.kept[0].tolist() == torch.topk(scores, 4).indices.sort().values.tolist()


def test_the_question_follows_the_last_image_or_video():
    """Qwen2.5-VL: the question is the text after the last image or video, without its end marker."""
    from tokenprune.testing.models import QWEN_VIDEO_TOKEN, tiny_qwen2_5_vl, tiny_qwen2_5_vl_processor

    model = tiny_qwen2_5_vl()
    processor = tiny_qwen2_5_vl_processor(model)
    tokenizer = processor.tokenizer
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "is it red?"},
                {"type": "video"},
                {"type": "text", "text": "what colour is the cube?"},
            ],
        }
    ]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer(text.replace(processor.video_token, processor.video_token * 3))["input_ids"]])
    assert (ids == QWEN_VIDEO_TOKEN).sum() == 3
    question = ids_of(tokenizer, "what colour is the cube?")
    # the tokenizer's special tokens (here <|vision_end|>, right after the video) are not question text
    assert ids[question_tokens(processor)(ids, torch.ones_like(ids))].tolist() == question
    layout = Layout.locate(get_adapter(model), ids, torch.ones_like(ids), None, question_tokens(processor))
    assert ids[layout.prompt_mask].tolist() == question


def test_a_prompt_callable_never_selects_markers_or_padding_and_must_match_the_ids():
    """What a callable marks is narrowed to real text: special tokens (BOS) and padding are dropped."""
    model = tiny_llava(seed=0)
    inputs = tiny_llava_inputs(model, [([11, 12], [40, 41]), ([13], [42, 43, 44, 45])])
    everything = lambda ids, mask: torch.ones_like(ids, dtype=torch.bool)  # noqa: E731
    with tokenprune.apply(model, "relevance", budget=4) as text:
        model.generate(**inputs, max_new_tokens=1)
    with tokenprune.apply(model, "relevance", budget=4, prompt_tokens=everything) as marked:
        model.generate(**inputs, max_new_tokens=1)
    assert [k.tolist() for k in marked.last.kept] == [k.tolist() for k in text.last.kept]

    wrong = lambda ids, mask: torch.ones(ids.shape[0], ids.shape[1] + 1, dtype=torch.bool)  # noqa: E731
    with (
        tokenprune.apply(model, "relevance", budget=4, prompt_tokens=wrong),
        pytest.raises(tokenprune.InputError, match=r"must return a \(B, L\) mask .* got \(2, \d+\)"),
    ):
        model.generate(**inputs, max_new_tokens=1)


@pytest.mark.parametrize("family", ["idefics3", "internvl"])
def test_a_question_written_before_the_image_is_the_question(family):
    """No words after the last image: the question is the user's text before it (placeholders and the image's
    markers out: the tokenizer's special tokens, and where the processor does not keep its tile tags special,
    the adapter's frame tokens); budget 1.0 still equals stock."""
    from PIL import Image

    from tokenprune.testing.models import tiny_idefics3, tiny_idefics3_processor, tiny_internvl, tiny_internvl_processor

    build, processor_of = {
        "idefics3": (tiny_idefics3, tiny_idefics3_processor),
        "internvl": (tiny_internvl, tiny_internvl_processor),
    }[family]
    model = build(seed=0)
    processor = processor_of(model)
    content = [{"type": "text", "text": "what colour is the cube ?"}, {"type": "image"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(text=[text], images=[[Image.new("RGB", (112, 56), "red")]], return_tensors="pt")
    mark = question_tokens(processor)
    question = processor.tokenizer("what colour is the cube ?", add_special_tokens=False)["input_ids"]
    layout = Layout.locate(get_adapter(model), inputs["input_ids"], inputs["attention_mask"], None, mark)
    assert inputs["input_ids"][0][layout.prompt_mask[0]].tolist() == question  # what the selector sees
    gen = {"max_new_tokens": 4, "do_sample": False}
    stock = model.generate(**inputs, **gen)
    with tokenprune.apply(model, "zspa", budget=1.0, prompt_tokens=mark):
        assert torch.equal(model.generate(**inputs, **gen), stock)
    with tokenprune.apply(model, "zspa", budget=0.25, prompt_tokens=mark) as session:
        model.generate(**inputs, **gen)
    assert session.last.visual_after == [12]


def test_an_image_without_any_prompt_text_is_kept_whole_at_budget_one():
    """A row of only an image: nothing to score by, but keeping every token needs no prompt."""
    from tokenprune.testing.models import tiny_internvl, tiny_internvl_inputs

    model = tiny_internvl(seed=0)
    inputs = tiny_internvl_inputs(model, [[[], []]], [1])
    gen = {"max_new_tokens": 4, "do_sample": False}
    stock = model.generate(**inputs, **gen)
    with tokenprune.apply(model, "zspa", budget=1.0):
        assert torch.equal(model.generate(**inputs, **gen), stock)
    with (
        tokenprune.apply(model, "zspa", budget=0.5),
        pytest.raises(tokenprune.InputError, match=r"rows \[0\] have images but no prompt text tokens"),
    ):
        model.generate(**inputs, **gen)


_IMAGE = {"type": "image"}
CONVERSATIONS = {  # (conversation, the question's words)
    "a system prompt, the question before the image": (
        [
            {"role": "system", "content": [{"type": "text", "text": "the cube is"}]},
            {"role": "user", "content": [{"type": "text", "text": "what colour ?"}, _IMAGE]},
        ],
        "what colour ?",
    ),
    "an earlier exchange": (
        [
            {"role": "user", "content": [_IMAGE, {"type": "text", "text": "what is the cube ?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "the cube"}]},
            {"role": "user", "content": [{"type": "text", "text": "what colour ?"}, _IMAGE]},
        ],
        "what colour ?",
    ),
    "a colon and role words in the question": (
        [{"role": "user", "content": [_IMAGE, {"type": "text", "text": "what is the User cube : user colour ?"}]}],
        "what is the User cube : user colour ?",
    ),
    "the question between two images": (
        [{"role": "user", "content": [_IMAGE, {"type": "text", "text": "what colour ?"}, _IMAGE]}],
        "what colour ?",
    ),
}


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl", "idefics3", "glm4v"])
@pytest.mark.parametrize("case", list(CONVERSATIONS))
def test_the_question_is_the_last_user_turn_s_words(family, case):
    """A system prompt, an earlier exchange (the model's answer, the role words) and the image are never the
    question; a question between two images is (LLaVA writes the first image right after "USER: ")."""
    from PIL import Image

    from tokenprune.testing import models

    build, processor_of = {
        "llava": (lambda: models.tiny_llava(image_size=56, patch_size=14), models.tiny_llava_processor),
        "qwen2.5-vl": (models.tiny_qwen2_5_vl, models.tiny_qwen2_5_vl_processor),
        "idefics3": (models.tiny_idefics3, models.tiny_idefics3_processor),
        "glm4v": (models.tiny_glm4v, models.tiny_glm4v_processor),
    }[family]
    model = build()
    processor = processor_of(model)
    conversation, question = CONVERSATIONS[case]
    images = [Image.new("RGB", (56, 56), "red")] * sum(
        part == _IMAGE for turn in conversation for part in turn["content"]
    )
    if family == "llava" and case == "an earlier exchange":  # LLaVA's tiny template writes users' turns only
        pytest.skip("the tiny LLaVA template has no assistant turns")
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(text=[text], images=[images], return_tensors="pt")
    layout = Layout.locate(
        get_adapter(model), inputs["input_ids"], inputs["attention_mask"], None, question_tokens(processor)
    )
    marked = inputs["input_ids"][0][layout.prompt_mask[0]].tolist()
    newline = processor.tokenizer.convert_tokens_to_ids("\n")
    if family == "llava":  # its template writes "<image>\n": the newline after the first image stays, as ever
        marked = [token for token in marked if token != newline]
    assert marked == processor.tokenizer(question, add_special_tokens=False)["input_ids"]


def test_a_last_turn_without_words_falls_back_to_the_whole_text_with_a_warning():
    from PIL import Image

    from tokenprune.testing.models import tiny_qwen2_5_vl, tiny_qwen2_5_vl_processor

    processor = tiny_qwen2_5_vl_processor(tiny_qwen2_5_vl())
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "what colour is the cube ?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "show me"}]},
        {"role": "user", "content": [_IMAGE]},
    ]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(text=[text], images=[[Image.new("RGB", (56, 56))]], return_tensors="pt")
    with pytest.warns(UserWarning, match=r"rows \[0\] .* last user turn holds no words; their whole text is used"):
        mask = question_tokens(processor)(inputs["input_ids"], inputs["attention_mask"])
    marked = inputs["input_ids"][0][mask[0]].tolist()
    question = processor.tokenizer("what colour is the cube ?", add_special_tokens=False)["input_ids"]
    assert any(marked[i : i + len(question)] == question for i in range(len(marked)))
