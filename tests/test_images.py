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
from cepo.tasks.images import EncodedImage, load_image, load_images, open_image, open_images
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
    assert isinstance(img, EncodedImage) and img.data is None and img.size == (5, 3)  # kept as its path
    check(img.decode())
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
        assert all(img.decode().mode == "RGB" for img in ex.images)


def test_rows_keep_their_images_encoded_bytes_inline_and_files_as_paths(folder):
    data = png_bytes(size=(40, 30))
    inline = open_image({"bytes": b64(data)}, folder, "f:1")
    assert inline.data == data and inline.path is None and inline.size == (40, 30)
    on_disk = open_image("img/a.png", folder, "f:2")
    assert on_disk.data is None and on_disk.path == folder / "img" / "a.png" and on_disk.size == (5, 3)
    check(on_disk.decode())
    check(inline.decode(), size=(40, 30))


def test_a_truncated_or_corrupt_file_fails_when_the_row_loads_not_when_it_is_decoded(folder):
    """The checks at load decode no PNG pixels (chunk checksums) and a JPEG at 1/8 of its size;
    they still catch what the full decode caught."""
    (folder / "img" / "cut.png").write_bytes(png_bytes(size=(64, 64))[:-30])
    with pytest.raises(ValueError, match=r"^f:3: image 0: cannot decode .*cut\.png"):
        open_image("img/cut.png", folder, "f:3")
    good = png_bytes(size=(64, 64))
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # inside the IDAT chunk: its CRC no longer holds
    with pytest.raises(
        ValueError,
        match=r"^f:4: image 1: cannot decode the 'bytes' value \(broken PNG file \(bad header checksum in b'IDAT'",
    ):
        open_images([{"bytes": b64(good)}, {"bytes": b64(bytes(flipped))}], folder, "f:4")
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 60).convert("RGB").save(buf, format="JPEG")
    with pytest.raises(ValueError, match=r"^f:5: image 0: cannot decode the 'bytes' value \(image file is truncated"):
        open_image({"bytes": buf.getvalue()[: len(buf.getvalue()) // 2]}, folder, "f:5")


def test_decoding_goes_straight_to_the_size_asked_for(folder):
    big = Image.new("RGB", (1200, 900), "white")
    big.paste((200, 30, 90), (0, 0, 600, 900))
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        big.save(buf, format=fmt)
        image = open_image({"bytes": buf.getvalue()}, folder, "f:1")
        asked = []

        def fit(w, h):
            asked.append((w, h))
            return (112, 84)

        small = image.decode(fit)
        assert asked == [(1200, 900)] and small.size == (112, 84) and small.mode == "RGB"
        left, right = small.getpixel((10, 40)), small.getpixel((100, 40))
        assert abs(left[0] - 200) < 8 and min(right) > 247  # the left half red, the right white


def test_an_image_file_that_goes_missing_after_loading_names_its_row(folder):
    (folder / "img" / "b.png").write_bytes(png_bytes())
    image = open_image("img/b.png", folder, "rows.jsonl:9", index=2)
    (folder / "img" / "b.png").unlink()
    with pytest.raises(ValueError, match=r"^rows.jsonl:9: image 2: file not found: .*b\.png$"):
        image.decode()
