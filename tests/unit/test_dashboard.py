"""The dashboard model and site from a real ledger, scan store and nightly reports (no registry: --ledger-only)."""

from __future__ import annotations

import datetime as dt
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bakery import dashboard
from bakery.config import load_project
from bakery.ledger import Event, SqliteLedger
from bakery.scan import Finding, ScanResult, save

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)
EVIL = '<script>alert("x")</script>'
CONFIG = """\
environments:
  dev: {registry: 127.0.0.1:5999/t}
  staging: {registry: 127.0.0.1:5998/t}
  prod: {registry: 127.0.0.1:5997/t}
policy:
  severity: HIGH
  ignore:
    - {id: CVE-2026-0003, reason: "not reachable", until: "2027-01-31"}
"""


def _digest(n: int) -> str:
    return f"sha256:{n:064x}"


def _scan(n: int, findings: list[Finding]) -> ScanResult:
    return ScanResult(image=f"img@{_digest(n)}", image_id=f"sha256:{n + 1000:064x}", digest=_digest(n),
                      trivy_version="0.59.1", db_updated_at=NOW, scanned_at=NOW - dt.timedelta(hours=3),
                      findings=findings)


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three builds of app:1 (dev has build 3, staging build 3, prod build 1) and a hostile image name."""
    for key in [k for k in __import__("os").environ if k.startswith("BAKERY_")]:
        monkeypatch.delenv(key)
    (tmp_path / "bakery.yaml").write_text(CONFIG)
    (tmp_path / "base-images").mkdir()
    project = load_project(tmp_path / "bakery.yaml", cwd=tmp_path)
    led = SqliteLedger(project.state_dir / "ledger.db")
    t0 = NOW - dt.timedelta(days=10)
    crit = Finding(id="CVE-2026-0001", package="openssl", installed="3.0.1", fixed="3.0.2", severity="CRITICAL",
                   title=EVIL)
    unfixed = Finding(id="CVE-2026-0002", package="zlib", installed="1.2", fixed="", severity="HIGH", title="zlib bug")
    ignored = Finding(id="CVE-2026-0003", package="curl", installed="8.0", fixed="8.1", severity="HIGH", title="curl")
    for n in (1, 2, 3):
        result = _scan(n, [crit, unfixed, ignored] if n == 1 else [unfixed])
        save(project, result)
        summary = result.summary()
        led.record(Event(kind="publish", image="app:1", digest=_digest(n), build_tag=f"1-2026110{n}.1",
                         from_env=None, to_env="dev", time=t0 + dt.timedelta(days=n), scan=summary,
                         details={"parent": "docker.io/library/debian@" + _digest(99)}, actor="ci"))
    for env, n in (("staging", 1), ("prod", 1), ("staging", 3)):
        led.record(Event(kind="gate", image="app:1", digest=_digest(n), build_tag=f"1-2026110{n}.1", from_env="dev",
                         to_env=env, time=t0 + dt.timedelta(days=n, hours=5), details={"passed": True}, actor="alice"))
        led.record(Event(kind="promote", image="app:1", digest=_digest(n), build_tag=f"1-2026110{n}.1",
                         from_env="dev", to_env=env, time=t0 + dt.timedelta(days=n, hours=5), actor="alice"))
    led.record(Event(kind="publish", image=f"x{EVIL}:1", digest=_digest(7), build_tag="1-20261101.1", from_env=None,
                     to_env="dev", time=t0, actor=EVIL))
    led.close()
    nightly = project.state_dir / "nightly"
    nightly.mkdir(parents=True)
    for i, (crit_n, high_n) in enumerate(((2, 5), (1, 3), (0, 1))):
        started = NOW - dt.timedelta(days=3 - i)
        (nightly / f"report-{started:%Y%m%dT%H%M%SZ}.json").write_text(json.dumps({
            "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "summary": f"run {i} {EVIL}", "ok": i != 1,
            "images": [{"ref": "app:1", "reason": "patches", "why": "openssl fixed", "status": "rebuilt",
                        "vulns_after": {"CRITICAL": crit_n, "HIGH": high_n, "MEDIUM": 0, "LOW": 0}}]}))
    return tmp_path


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(str(a["href"]))
        if tag == "script":
            self.scripts.append(str(a.get("src")))


def test_matrix_pending_findings_and_trend(fleet: Path) -> None:
    project = load_project(fleet / "bakery.yaml", cwd=fleet)
    model = dashboard.gather(project, now=NOW, live=False)
    app = next(i for i in model.images if i.image == "app:1")
    assert [app.cells[e].build_tag for e in model.envs] == ["1-20261103.1", "1-20261103.1", "1-20261101.1"]
    assert app.pending == ["staging is 2 builds ahead of prod"]
    prod = app.cells["prod"]
    assert prod.counts and prod.counts["CRITICAL"] == 1 and prod.fixable and prod.fixable["CRITICAL"] == 1
    assert prod.fixable["HIGH"] == 1  # the ignored curl finding has a fix; the zlib one does not
    assert prod.gate == "passed" and prod.attestations == "unknown"
    assert dashboard.human_age(NOW, prod.since) == "8d"
    sections = {(f.section, f.id) for f in app.findings}
    assert sections == {("failing", "CVE-2026-0001"), ("unfixed", "CVE-2026-0002"), ("ignored", "CVE-2026-0003")}
    ignored = next(f for f in app.findings if f.section == "ignored")
    assert "until 2027-01-31" in ignored.note
    assert [p.counts["CRITICAL"] for p in app.trend] == [2, 1, 0]
    assert app.rebuild_reasons and "patches: openssl fixed" in app.rebuild_reasons[0]
    assert [x.kind for x in app.lineage] == ["self", "upstream"] and app.lineage[1].digest == _digest(99)


def test_site_escapes_untrusted_text_and_links_resolve(fleet: Path, tmp_path: Path) -> None:
    project = load_project(fleet / "bakery.yaml", cwd=fleet)
    out = tmp_path / "site"
    pages = dashboard.render(dashboard.gather(project, now=NOW, live=False), out)
    assert len(pages) == 1 + 2 + 3  # index, two images, three runs
    for page in pages:
        html = page.read_text()
        assert "<script>alert" not in html, page
        parser = _Links()
        parser.feed(html)
        assert parser.scripts == [("" if page.parent == out else "../") + "assets/table.js"]
        for href in parser.links:
            assert (page.parent / href).resolve().is_file(), f"{page.name}: broken link {href}"
    index = (out / "index.html").read_text()
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in index
    assert re.findall(r'<th class="env"[^>]*>(\w+)</th>', index) == ["dev", "staging", "prod"]
    app_page = next(p for p in pages if p.name.startswith("app_1-")).read_text()
    # the chart: one line per severity over the three runs; CRITICAL falls from 2 to 0 (y grows downwards)
    crit = re.search(r'data-severity="CRITICAL"[^>]*points="([^"]+)"', app_page)
    assert crit is not None
    ys = [float(p.split(",")[1]) for p in crit.group(1).split()]
    assert len(ys) == 3 and ys[0] < ys[1] < ys[2]
    assert _digest(1) in app_page  # the full digest, on hover and for copying


def test_report_html_cli(fleet: Path, tmp_path: Path, bakery) -> None:
    out = tmp_path / "site"
    r = bakery("report", "html", "--out", str(out), "--ledger-only", cwd=fleet, env={"BAKERY_NOW": NOW.isoformat()})
    assert r.code == 0, r.err
    assert "wrote 6 pages" in r.out and (out / "index.html").is_file()
    r = bakery("report", "html", "--out", str(out), "--ledger-only", "--format", "json", cwd=fleet)
    data = json.loads(r.out)
    assert data["model"]["envs"] == ["dev", "staging", "prod"] and len(data["pages"]) == 6


def test_slugs_never_collide_or_escape() -> None:
    names = ["a/b:1", "a_b:1", "../../etc:1", "a b:1"]
    slugs = {dashboard.slug(n) for n in names}
    assert len(slugs) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", s) and not s.startswith(".") for s in slugs)


def test_out_must_be_new_empty_or_a_previous_site(fleet: Path, tmp_path: Path, bakery) -> None:
    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    (mine / "images" / "holiday.jpg").write_text("precious")
    r = bakery("report", "html", "--out", str(mine), "--ledger-only", cwd=fleet)
    assert r.code == 2 and "not a site bakery wrote" in r.err
    assert (mine / "images" / "holiday.jpg").read_text() == "precious"
    site = tmp_path / "site"
    for _ in range(2):  # a site bakery wrote is written over
        r = bakery("report", "html", "--out", str(site), "--ledger-only", cwd=fleet)
        assert r.code == 0, r.err


def test_a_refused_promotion_is_pending_with_its_reason(fleet: Path) -> None:
    project = load_project(fleet / "bakery.yaml", cwd=fleet)
    led = SqliteLedger(project.state_dir / "ledger.db")
    led.record(Event(kind="gate", image="app:1", digest=_digest(3), build_tag="1-20261103.1", from_env="staging",
                     to_env="prod", time=NOW, details={"passed": False},
                     gates=[{"name": "soak", "passed": False, "reason": "in staging 2h, soak 24h"},
                            {"name": "scan", "passed": True, "reason": "passed"}]))
    led.close()
    app = next(i for i in dashboard.gather(project, now=NOW, live=False).images if i.image == "app:1")
    assert app.pending == ["staging is 2 builds ahead of prod",
                           "promotion of 1-20261103.1 to prod refused (soak: in staging 2h, soak 24h)"]
    assert app.cells["prod"].gate == "passed"  # the build prod runs passed its gates; the refusal is the other's


def test_a_registry_that_is_down_shows_the_ledger_view_with_a_note(fleet: Path, monkeypatch) -> None:
    """`bakery status` is the live source; here a real status() against closed ports (nothing listens there),
    without the client's retries (they would only make the test slow)."""
    from bakery.registry import RegistryClient

    init = RegistryClient.__init__
    monkeypatch.setattr(RegistryClient, "__init__", lambda self, *a, **k: init(self, *a, **{**k, "retries": 0}))
    project = load_project(fleet / "bakery.yaml", cwd=fleet)
    model = dashboard.gather(project, now=NOW, live=True)
    app = next(i for i in model.images if i.image == "app:1")
    prod = app.cells["prod"]
    assert prod.digest == _digest(1) and prod.build_tag == "1-20261101.1"
    assert prod.note.startswith("registry unreachable")
    assert any(n.startswith("prod: registry unreachable") for n in model.notes)
