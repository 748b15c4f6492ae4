"""The VOC reader (refquant.data.voc): annotations, image sets, names, images, hostile input.

Independent truths: hand-written VOC documents whose values are known by construction
(laid out as the VOC2007 annotations are), the standard XML attacks (OWASP's billion
laughs, external general and parameter entities, external DTD), and JPEG files written
by Pillow then truncated or corrupted by hand.
"""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refquant.data.voc import ground_truth, load_image, load_voc, parse_xml, read_annotation, read_image_set, read_names

NAMES = ["dog", "person", "cat"]

DOG_AND_PERSON = """<annotation>
\t<folder>VOC2007</folder>
\t<filename>000001.jpg</filename>
\t<size>
\t\t<width>353</width>
\t\t<height>500</height>
\t\t<depth>3</depth>
\t</size>
\t<segmented>0</segmented>
\t<object>
\t\t<name>dog</name>
\t\t<pose>Left</pose>
\t\t<truncated>1</truncated>
\t\t<difficult>0</difficult>
\t\t<bndbox>
\t\t\t<xmin>48</xmin>
\t\t\t<ymin>240</ymin>
\t\t\t<xmax>195</xmax>
\t\t\t<ymax>371</ymax>
\t\t</bndbox>
\t</object>
\t<object>
\t\t<name>person</name>
\t\t<difficult>1</difficult>
\t\t<bndbox>
\t\t\t<xmin>8</xmin>
\t\t\t<ymin>12</ymin>
\t\t\t<xmax>352</xmax>
\t\t\t<ymax>498</ymax>
\t\t</bndbox>
\t</object>
</annotation>
"""


def write(tmp_path, name, text, encoding="utf-8"):
    path = Path(tmp_path) / name
    path.write_bytes(text.encode(encoding))
    return path


def test_reads_a_voc_annotation(tmp_path):
    """Hand-written document: sizes, names, class ids (line order in the names), 1-based boxes
    kept as written, flags, and truncated defaulting to 0 where the tag is absent."""
    annotation = read_annotation(write(tmp_path, "a.xml", DOG_AND_PERSON), NAMES)
    assert (annotation["width"], annotation["height"], annotation["filename"]) == (353, 500, "000001.jpg")
    dog, person = annotation["objects"]
    assert dog == {"label": "dog", "class_id": 0, "box": (48.0, 240.0, 195.0, 371.0),
                   "difficult": False, "truncated": True}
    assert person == {"label": "person", "class_id": 1, "box": (8.0, 12.0, 352.0, 498.0),
                      "difficult": True, "truncated": False}


def test_reads_the_package_voc_names():
    """Hand-checked: Darknet's voc.names lists the 20 VOC classes, aeroplane first, tvmonitor last."""
    names = read_names(Path(__file__).resolve().parents[1] / "refquant" / "cfg" / "voc.names")
    assert len(names) == 20 and names[0] == "aeroplane" and names[-1] == "tvmonitor" and names[14] == "person"


def test_repeated_name_is_refused(tmp_path):
    """Hand-written names file with a repeated class: the error names the file and both lines."""
    path = write(tmp_path, "x.names", "cat\ndog\n\ncat\n")
    with pytest.raises(ValueError, match=r"x\.names:4: class name 'cat' repeats line 1"):
        read_names(path)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><folder>&lol9;</folder></annotation>
"""


def external_entity(secret_path):
    return f"""<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file://{secret_path}">]>
<annotation><folder>&secret;</folder></annotation>
"""


def parameter_entity(secret_path):
    return f"""<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY % remote SYSTEM "file://{secret_path}"> %remote;]>
<annotation/>
"""


EXTERNAL_DTD = """<?xml version="1.0"?>
<!DOCTYPE annotation SYSTEM "http://127.0.0.1:9/evil.dtd">
<annotation/>
"""


@pytest.mark.parametrize("attack", ["billion_laughs", "external_entity", "parameter_entity", "external_dtd",
                                    "billion_laughs_utf16"])
def test_hostile_xml_is_refused(tmp_path, attack):
    """OWASP's XML attacks: each document is refused at its DOCTYPE, before any entity is declared,
    expanded or fetched; the error names the file and line 2 (where the DOCTYPE is) and the secret
    file's content never appears."""
    secret = write(tmp_path, "secret.txt", "TOP-SECRET-CONTENT")
    text, encoding = {"billion_laughs": (BILLION_LAUGHS, "utf-8"),
                      "external_entity": (external_entity(secret), "utf-8"),
                      "parameter_entity": (parameter_entity(secret), "utf-8"),
                      "external_dtd": (EXTERNAL_DTD, "utf-8"),
                      "billion_laughs_utf16": (BILLION_LAUGHS.replace('"1.0"?>', '"1.0" encoding="UTF-16"?>'),
                                               "utf-16")}[attack]
    path = write(tmp_path, f"{attack}.xml", text, encoding)
    with pytest.raises(ValueError, match=rf"{attack}\.xml:2: the document declares a document type") as error:
        read_annotation(path, NAMES)
    assert "TOP-SECRET" not in str(error.value)


def test_entity_without_dtd_is_malformed(tmp_path):
    """Hand-written: an entity reference with no declaration (line 3) is malformed XML, named so."""
    path = write(tmp_path, "undefined.xml", "<annotation>\n<size>\n<width>&w;</width>\n</size>\n</annotation>\n")
    with pytest.raises(ValueError, match=r"undefined\.xml:3: malformed XML: undefined entity"):
        read_annotation(path, NAMES)


def test_malformed_xml_names_file_and_line(tmp_path):
    """Hand-written: the <xmin> element is closed by </ymin> on line 16: expat's mismatched tag."""
    broken = DOG_AND_PERSON.replace("<xmin>48</xmin>", "<xmin>48</ymin>")
    path = write(tmp_path, "broken.xml", broken)
    with pytest.raises(ValueError, match=r"broken\.xml:16: malformed XML: mismatched tag"):
        read_annotation(path, NAMES)


@pytest.mark.parametrize("change, message", [
    (("<name>dog</name>", "<name>wolf</name>"), r":11: class 'wolf' is not in the names file"),
    (("<xmin>48</xmin>", ""), r":15: <bndbox> has no <xmin>"),
    (("<xmin>48</xmin>", "<xmin>4x8</xmin>"), r":16: <xmin> is '4x8', expected a finite decimal number"),
    (("<xmin>48</xmin>", "<xmin>300</xmin>"), r":15: box .* has xmin > xmax"),
    (("<difficult>0</difficult>", "<difficult>2</difficult>"), r":14: <difficult> is '2', expected 0 or 1"),
    (("<width>353</width>", "<width>0</width>"), r":4: image size 0x500"),
    (("<height>500</height>", ""), r":4: <size> has no <height>"),
    (("<xmin>48</xmin>", "<xmin>\u0664\u0668</xmin>"), r":16: <xmin> is '\u0664\u0668', expected a finite decimal"),
    (("<ymax>371</ymax>", "<ymax>nan</ymax>"), r":19: <ymax> is 'nan', expected a finite decimal number"),
    (("<xmax>195</xmax>", "<xmax>354</xmax>"), r":15: box .* leaves the 353x500 image of <size>"),
    (("<xmin>48</xmin>", "<xmin>0</xmin>"), r":15: box .* leaves the 353x500 image"),
    (("<width>353</width>", "<width>353</width><width>35</width>"), r":5: <size> has a second <width> \(first at line 5\)"),
    (("<name>dog</name>", "<name>dog</name><name>cat</name>"), r":11: <object> has a second <name> \(first at line 11\)"),
    (("<difficult>0</difficult>", "<difficult>0</difficult><difficult>1</difficult>"),
     r":14: <object> has a second <difficult>"),
])
def test_structural_errors_name_file_and_line(tmp_path, change, message):
    """Hand-written documents with one fault each; the line numbers are those of the faulty element
    in DOG_AND_PERSON."""
    path = write(tmp_path, "bad.xml", DOG_AND_PERSON.replace(*change))
    with pytest.raises(ValueError, match=r"bad\.xml" + message):
        read_annotation(path, NAMES)


def test_parse_xml_records_lines(tmp_path):
    """Hand-counted: <object> elements start on lines 10 and 22 of DOG_AND_PERSON."""
    root, lines = parse_xml(write(tmp_path, "a.xml", DOG_AND_PERSON))
    assert [lines[o] for o in root.findall("object")] == [10, 22]


def jpeg(tmp_path, name="x.jpg", size=(40, 30)):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path = Path(tmp_path) / name
    Image.fromarray(pixels).save(path, quality=95)
    return path, pixels


def test_load_image_layout_and_scale(tmp_path):
    """Independent truth: Pillow's own decoding of the file, transposed to (3, H, W) and divided by
    255 (Darknet's load_image_color)."""
    path, _ = jpeg(tmp_path)
    expected = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1) / 255
    image = load_image(path, (40, 30))
    assert image.dtype == np.float32 and image.shape == (3, 30, 40)
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_jpeg_is_refused(tmp_path, keep):
    """A JPEG cut to a fraction of its bytes by hand: the error names the file."""
    path, _ = jpeg(tmp_path, size=(120, 90))
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ValueError, match=r"x\.jpg: cannot decode the image, truncated or corrupt"):
        load_image(path)


def test_corrupt_and_empty_files_are_refused(tmp_path):
    """Hand-made: random bytes after a JPEG start marker, and an empty file, are not images."""
    garbage = Path(tmp_path) / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff" + bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8)))
    empty = Path(tmp_path) / "empty.jpg"
    empty.write_bytes(b"")
    for path in (garbage, empty):
        with pytest.raises(ValueError, match=rf"{path.name}: cannot decode the image"):
            load_image(path)


def test_image_size_must_match_annotation(tmp_path):
    """Hand-made: a 40x30 image whose annotation claims 30x40."""
    path, _ = jpeg(tmp_path)
    with pytest.raises(ValueError, match=r"x\.jpg: image is 40x30 but its annotation says 30x40"):
        load_image(path, (30, 40))


def make_tree(root):
    """A two-image VOC tree written by hand."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n\n000002  1\n")
    write(root / "Annotations", "000001.xml", DOG_AND_PERSON)
    write(root / "Annotations", "000002.xml", DOG_AND_PERSON.replace("<name>dog</name>", "<name>cat</name>")
          .replace("<width>353</width>", "<width>360</width>"))  # its boxes still inside it
    jpeg(root / "JPEGImages", "000001.jpg", size=(353, 500))
    jpeg(root / "JPEGImages", "000002.jpg", size=(360, 500))


def test_load_voc_tree(tmp_path):
    """Hand-built tree: ids from the image set (first word per line, blank lines skipped), records
    with paths and sizes, and the ground truth in average_precision's form."""
    make_tree(tmp_path)
    assert read_image_set(tmp_path, "test") == ["000001", "000002"]
    records = load_voc(tmp_path, "test", NAMES)
    assert [r["id"] for r in records] == ["000001", "000002"]
    assert records[1]["image_path"] == tmp_path / "JPEGImages" / "000002.jpg"
    assert (records[1]["width"], records[1]["height"]) == (360, 500)
    assert ground_truth(records) == [
        {"image": "000001", "label": "dog", "box": (48.0, 240.0, 195.0, 371.0), "difficult": False},
        {"image": "000001", "label": "person", "box": (8.0, 12.0, 352.0, 498.0), "difficult": True},
        {"image": "000002", "label": "cat", "box": (48.0, 240.0, 195.0, 371.0), "difficult": False},
        {"image": "000002", "label": "person", "box": (8.0, 12.0, 352.0, 498.0), "difficult": True}]


def test_missing_pieces_of_a_tree_are_named(tmp_path):
    """Hand-built tree with its second image deleted, and a split that does not exist."""
    make_tree(tmp_path)
    (tmp_path / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"000002\.jpg: image of test id '000002' is missing"):
        load_voc(tmp_path, "test", NAMES)
    with pytest.raises(FileNotFoundError, match=r"train\.txt: no such image set"):
        load_voc(tmp_path, "train", NAMES)


def test_text_files_tolerate_a_byte_order_mark_and_refuse_other_encodings(tmp_path):
    """Hand-written files: a UTF-8 byte-order mark (Windows editors) is not part of the first class
    name or image id; Latin-1 text is refused naming the file and the byte."""
    names = write(tmp_path, "bom.names", "\ufeffdog\nperson\n")
    assert read_names(names) == ["dog", "person"]
    latin = tmp_path / "latin.names"
    latin.write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.names: the names file is not UTF-8 text \(byte 3 is b'\\xe9'\)"):
        read_names(latin)
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "test.txt").write_bytes(b"\xef\xbb\xbf000001\n000002\n")
    assert read_image_set(tmp_path, "test") == ["000001", "000002"]


@pytest.mark.parametrize("image_id", ["../../etc/hostname", "a/b", ".hidden", "a\x01b"])
def test_image_set_ids_and_splits_stay_inside_the_tree(tmp_path, image_id):
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "test.txt").write_text(f"000001\n{image_id}\n")
    with pytest.raises(ValueError, match=r"test\.txt:2: image id .* is not a plain file stem"):
        read_image_set(tmp_path, "test")
    with pytest.raises(ValueError, match=r"split .*: expected the plain name of a file of .*Main"):
        read_image_set(tmp_path, image_id)


def test_an_image_is_refused_by_its_header_size_before_decoding(tmp_path, monkeypatch):
    """A 40x30 JPEG whose header is edited by hand to claim 12000x9000 pixels (the SOF0 marker's
    height and width): refused by the size it states, whatever its few bytes would decode to."""
    path = jpeg(tmp_path, size=(40, 30))[0]
    data = bytearray(path.read_bytes())
    start = data.find(b"\xff\xc0")
    data[start + 5:start + 9] = (9000).to_bytes(2, "big") + (12000).to_bytes(2, "big")
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"x\.jpg: its header states 12000x9000 = 108000000 pixels, above the limit"):
        load_image(path)
    monkeypatch.setenv("REFQUANT_MAX_PIXELS", "1199")  # 40x30 = 1200 pixels: one too many
    with pytest.raises(ValueError, match=r"40x30 = 1200 pixels, above the limit of 1199"):
        load_image(jpeg(tmp_path, "y.jpg", size=(40, 30))[0])
