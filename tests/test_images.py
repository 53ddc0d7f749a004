"""Images of JSONL rows: every spec kind loads to RGB, and every bad image is one ValueError naming
the file, the line and the image."""

import base64
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cepo.tasks.base import IMAGE_PLACEHOLDER
from cepo.tasks.images import load_image, load_images
from cepo.tasks.jsonl import JsonlTask, read_jsonl

COLOUR = (200, 30, 90)


def png_bytes(colour=COLOUR, size=(5, 3), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check(img, colour=COLOUR, size=(5, 3)):
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == size
    assert img.getpixel((2, 1)) == colour


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png_bytes())
    return tmp_path


def test_a_path_is_relative_to_the_jsonl_folder_not_the_working_directory(folder, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    check(load_image("img/a.png", folder, "f.jsonl:1"))
    with pytest.raises(ValueError, match="file not found"):
        load_image("img/a.png", folder / "img", "f.jsonl:1")


def test_an_absolute_path_loads(folder):
    check(load_image(str(folder / "img" / "a.png"), "/nonexistent", "f.jsonl:1"))


def test_a_base64_data_url_loads():
    check(load_image("data:image/png;base64," + b64(png_bytes()), "/nonexistent", "f.jsonl:1"))


def test_raw_base64_loads_even_wrapped_over_lines():
    raw = b64(png_bytes())
    check(load_image(raw, "/nonexistent", "f.jsonl:1"))
    check(load_image("\n".join(raw[i : i + 20] for i in range(0, len(raw), 20)), "/nonexistent", "f.jsonl:1"))


def test_a_hugging_face_bytes_dict_loads(folder):
    check(load_image({"bytes": b64(png_bytes()), "path": "ignored.png"}, "/nonexistent", "f.jsonl:1"))
    check(load_image({"bytes": None, "path": "img/a.png"}, folder, "f.jsonl:1"))


def test_images_are_converted_to_rgb():
    check(load_image(b64(png_bytes((77,), mode="L")), "/x", "f:1"), colour=(77, 77, 77))


def test_a_single_spec_is_a_list_of_one(folder):
    assert load_images(None, folder, "f:1") == []
    (one,) = load_images("img/a.png", folder, "f:1")
    check(one)


@pytest.mark.parametrize(
    "spec, reason",
    [
        ("img/missing.png", "file not found: "),
        ({"bytes": b64(b"definitely not an image")}, "cannot decode"),
        ({"bytes": "@@not base64@@"}, "'bytes' is not valid base64"),
        ("data:image/png;base64," + b64(png_bytes()[:40]), "cannot decode"),  # truncated PNG
        ("data:image/png," + b64(png_bytes()), "a data URL must be"),
        ({"path": None}, "a dict image needs 'bytes'"),
        (3, "must be a path, a base64 string or {'bytes': base64}, got int"),
        ("", "got an empty string"),
        ("img", "cannot read"),  # a folder
    ],
)
def test_a_bad_image_is_a_value_error_naming_file_line_and_image(folder, spec, reason):
    with pytest.raises(ValueError) as err:
        load_images(["img/a.png", spec], folder, "rows.jsonl:7")
    assert str(err.value).startswith("rows.jsonl:7: image 1: "), err.value
    assert reason in str(err.value)
    assert "\n" not in str(err.value)


def test_a_truncated_file_on_disk_fails_at_load(folder):
    (folder / "img" / "cut.png").write_bytes(png_bytes(size=(64, 64))[:-30])
    with pytest.raises(ValueError, match=r"^f:3: image 0: cannot decode .*cut\.png"):
        load_image("img/cut.png", folder, "f:3")


def test_a_geo3k_row_loads_with_its_image(folder):
    row = {"problem": f"{IMAGE_PLACEHOLDER}Find x. Choices: A:1 B:2", "answer": "2", "images": ["img/a.png"]}
    text = {"question": "1+1", "answer": "2"}
    (ex, plain) = read_jsonl(write_rows(folder / "geo.jsonl", [row, text]), "{question}")
    assert ex.prompt == row["problem"] and ex.answer == "2"
    (img,) = ex.images
    check(img)
    assert plain.images == [] and plain.prompt == "1+1"


def test_a_row_without_placeholders_gets_them_at_the_start_of_the_user_turn(folder):
    rows = [
        {"question": "How many?", "answer": "2", "images": ["img/a.png", {"bytes": b64(png_bytes())}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What?"}], "answer": "1"},
    ]
    rows[1]["images"] = "img/a.png"
    two, conv = read_jsonl(write_rows(folder / "p.jsonl", rows), "Q: {question}")
    assert two.prompt == "<image><image>Q: How many?" and len(two.images) == 2
    assert conv.prompt == "<image>What?" and conv.messages[-1] == {"role": "user", "content": "<image>What?"}
    assert conv.messages[0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize(
    "row, message",
    [
        ({"problem": "<image> and <image>", "answer": "1", "images": ["img/a.png"]}, "2 <image> placeholder(s) but"),
        ({"problem": "Find x in <image>", "answer": "1"}, "1 <image> placeholder(s) but the row has 0 image(s)"),
        (
            {
                "messages": [{"role": "user", "content": "<image>"}, {"role": "user", "content": "x"}],
                "answer": "1",
                "images": ["img/a.png"],
            },
            "<image> in messages[0]",
        ),
        ({"problem": "<image>", "answer": "1", "images": ["img/none.png"]}, "image 0: file not found"),
    ],
)
def test_a_placeholder_or_image_mismatch_names_file_and_line(folder, row, message):
    path = write_rows(folder / "bad.jsonl", [{"question": "q", "answer": "1"}, row])
    with pytest.raises(ValueError) as err:
        JsonlTask(train=str(path), verifier="exact").validate()
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value), err.value


SPECS = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=8),
    st.sampled_from(["img/a.png", "data:image/png;base64,", "data:,x", "iVBORw0KGgo=", "/9j/"]),
    st.dictionaries(st.sampled_from(["bytes", "path"]), st.none() | st.text(max_size=8), max_size=2),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(images=SPECS | st.lists(SPECS, max_size=3), problem=st.sampled_from(["q", "<image>q", "<image><image>"]))
def test_no_image_value_gives_an_unnamed_error(folder, images, problem):
    """Whatever a row's ``images`` holds, the loader returns rows or names the file and line."""
    path = write_rows(folder / "fuzz.jsonl", [{"problem": problem, "answer": "1", "images": images}])
    try:
        (ex,) = read_jsonl(path, "{question}")
    except ValueError as err:
        assert str(err).startswith(f"{path}:1: "), err
    else:
        assert ex.prompt.count(IMAGE_PLACEHOLDER) == len(ex.images)
        assert all(img.mode == "RGB" for img in ex.images)
