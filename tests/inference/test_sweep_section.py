"""One sweep's report section (issue #17) from its real template: every 3-D TrP named in the table with its
figures, "—" where a figure is NaN (and the note saying why), the class the 2-D rule shows (indeterminate unless
told otherwise), escaped names and quoted picture paths, pictures shown at one scale. Parsed back with the
standard library's HTML parser."""

from __future__ import annotations

import math
from html.parser import HTMLParser

from tpnet.core.volume_postprocess import TriggerPoint3D
from tpnet.inference.sweep_section import (
    DISPLAY_WIDTH_PX,
    SweepPicture,
    TrpPictures,
    sweep_context,
    sweep_section_html,
)

SHAPE = (40, 120, 200)
SPACING = (0.5, 0.25, 0.25)
HEADER = [
    "No.",
    "Finding",
    "Confidence",
    "Stiffness (kPa) mean / max",
    "SWE coverage",
    "Centre (mm) lateral, depth, along sweep",
    "Volume (mm³)",
    "Extent along sweep (mm)",
    "Slices",
    "Nearest nerve or vessel (mm)",
]


def _trp(trp_id: int, **fields) -> TriggerPoint3D:
    values = dict(
        trp_id=trp_id, class_name="active_trp", label=1, centroid_mm=(15.0, 14.0, 8.0), volume_mm3=145.34,
        extent_along_sweep_mm=7.5, slices=(9, 23), voxel_count=4651, stiffness_kpa_mean=42.4,
        stiffness_kpa_max=61.7, swe_coverage=0.9, confidence=0.81, nearest_critical_mm=7.6,
    )  # fmt: skip
    values.update(fields)
    return TriggerPoint3D(**values)


class _Section(HTMLParser):
    """Table rows (cell texts), <img> attributes, the notes' texts and the heading's id."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.images: list[dict] = []
        self.notes: list[str] = []
        self.ids: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._note: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs)
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "p" and "note" in (attrs.get("class") or ""):
            self._note = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        elif tag == "p" and self._note is not None:
            self.notes.append(" ".join("".join(self._note).split()))
            self._note = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._note is not None:
            self._note.append(data)


def test_the_table_names_every_trp_with_its_figures():
    trps = [
        _trp(1),
        _trp(2, class_name="latent_trp", label=2, centroid_mm=(34.0, 20.0, 14.25), slices=(23, 33), volume_mm3=62.47),
    ]  # fmt: skip
    page = _Section(sweep_section_html("sweep_01.nii.gz", "sweep_01", trps, SHAPE, SPACING))
    assert page.rows[0] == HEADER
    assert [row[0] for row in page.rows[1:]] == ["1", "2"]
    assert page.rows[1][2:] == ["81 %", "42 / 62", "90 %", "15.0, 14.0, 8.0", "145.3", "7.5", "9–23", "7.6"]
    assert page.rows[2][5:9] == ["34.0, 20.0, 14.2", "62.5", "7.5", "23–33"]
    assert "sweep-sweep_01" in page.ids


def test_nan_figures_show_a_dash_and_the_notes_say_why():
    trp = _trp(
        1, stiffness_kpa_mean=math.nan, stiffness_kpa_max=math.nan, swe_coverage=math.nan,
        confidence=math.nan, nearest_critical_mm=math.nan,
    )  # fmt: skip
    page = _Section(sweep_section_html("s", "s", [trp], SHAPE, SPACING))
    row = page.rows[1]
    assert row[2] == "—" and row[3] == "— / —" and row[4] == "—" and row[9] == "—"
    notes = " ".join(page.notes)
    assert "no elastography (SWE) signal" in notes
    assert "none detected in this sweep" in notes
    assert "no probabilities were kept" in notes
    # Figures that are known carry no such note.
    known = " ".join(_Section(sweep_section_html("s", "s", [_trp(1)], SHAPE, SPACING)).notes)
    assert "no elastography" not in known and "none detected" not in known


def test_a_trp_is_indeterminate_unless_the_caller_shows_its_class():
    trps = [_trp(1), _trp(2, class_name="latent_trp", label=2)]
    page = _Section(sweep_section_html("s", "s", trps, SHAPE, SPACING))
    assert [row[1] for row in page.rows[1:]] == ["Trigger point, type indeterminate"] * 2
    assert any(note.startswith("Indeterminate:") for note in page.notes)
    shown = _Section(sweep_section_html("s", "s", trps, SHAPE, SPACING, class_shown={1: "active_trp", 2: "latent_trp"}))  # fmt: skip
    assert [row[1] for row in shown.rows[1:]] == ["Active trigger point", "Latent trigger point"]
    assert not any(note.startswith("Indeterminate:") for note in shown.notes)


def test_confidence_is_called_calibrated_only_when_it_is():
    raw = " ".join(_Section(sweep_section_html("s", "s", [_trp(1)], SHAPE, SPACING)).notes)
    assert "not calibrated for sweeps" in raw
    calibrated = _Section(sweep_section_html("s", "s", [_trp(1)], SHAPE, SPACING, confidence_calibrated=True))
    assert "not calibrated" not in " ".join(calibrated.notes)


def test_low_swe_coverage_is_marked():
    html = sweep_section_html("s", "s", [_trp(1, swe_coverage=0.3)], SHAPE, SPACING)
    assert 'class="badge">low' in html
    assert "low SWE coverage" in " ".join(_Section(html).notes)


def test_names_are_escaped_and_picture_paths_quoted():
    name = '<script>alert("x")</script> & sweep'
    pictures = {
        1: TrpPictures(SweepPicture('sweeps/a b"<1>.png', 914), SweepPicture("sweeps/along 1.png", 520))
    }
    html = sweep_section_html(
        name, "a b/c", [_trp(1)], SHAPE, SPACING, projection=SweepPicture("sweeps/proj #1.png", 1011),
        trp_pictures=pictures,
    )  # fmt: skip
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; sweep" in html
    page = _Section(html)
    assert [i["src"] for i in page.images] == [
        "sweeps/proj%20%231.png",
        "sweeps/a%20b%22%3C1%3E.png",
        "sweeps/along%201.png",
    ]
    assert "sweep-a%20b%2Fc" in page.ids


def test_pictures_share_one_scale_on_the_page():
    pictures = {1: TrpPictures(SweepPicture("mid.png", 900), SweepPicture("along.png", 450))}
    context = sweep_context(
        "s", "s", [_trp(1)], SHAPE, SPACING, projection=SweepPicture("p.png", 600), trp_pictures=pictures
    )
    assert context["projection"]["width"] == round(600 * DISPLAY_WIDTH_PX / 900)
    assert [i["width"] for i in context["pictures"][0]["images"]] == [DISPLAY_WIDTH_PX, DISPLAY_WIDTH_PX // 2]
    page = _Section(sweep_section_html("s", "s", [_trp(1)], SHAPE, SPACING, trp_pictures=pictures))
    assert [i["style"] for i in page.images] == [
        f"width:{DISPLAY_WIDTH_PX}px",
        f"width:{DISPLAY_WIDTH_PX // 2}px",
    ]


def test_a_sweep_without_trps_or_pictures_says_so():
    html = sweep_section_html("empty sweep", "e", [], SHAPE, SPACING)
    assert "No trigger point found in this sweep." in html
    assert "did not draw them" in html
    assert "<table" not in html
