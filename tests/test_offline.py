"""``tracewatch check``'s shortcuts raise exactly what the worker's stages raise.

``Pipeline.process`` leaves the boxes of a count or stock-in as they are until the ledger
knows one of them; the worker's ``route`` makes an event of every box. Both must give the
same alerts, in the same order, over every replayed log and a small simulated month.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from detectors.messages import BadInput, parse
from detectors.model import Alert, Message, RuleConfig
from streams.ledger import Ledger, MemoryLedger
from streams.offline import CheckFailed, run_check
from streams.pipeline import Pipeline, _link_earlier
from streams.reference import load_catalog
from streams.simulate import simulate
from tests import factory

DATA = Path(__file__).parent / "data"
PSN_KEY = b"test-key"
LOGS = sorted(p for p in DATA.glob("*/*.jsonl") if not p.name.endswith(".expected.jsonl"))


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated run: every rule, counts of boxes sold before, retries, deletes."""
    out = tmp_path_factory.mktemp("sim")
    simulate(out, seed=5, days=8, institutions=30, people=1000)
    return out


def messages(log: Path) -> list[tuple[int, Message]]:
    parsed = []
    for number, line in enumerate(log.read_bytes().splitlines(), start=1):
        try:
            parsed.append((number, parse(orjson.loads(line), PSN_KEY)))
        except (orjson.JSONDecodeError, BadInput):
            pass
    return parsed


def staged(pipeline: Pipeline, batch: Sequence[tuple[int, Message]]) -> list[Alert]:
    """A batch through the worker's public stages, put together the way ``process`` does."""
    routed = pipeline.route(batch)
    pipeline.commit_routing(routed.commit)
    codes = pipeline.apply_codes(routed.events)
    persons = pipeline.apply_persons(codes.person_events)
    code_alerts = codes.alerts
    if persons.alerts and code_alerts:
        raised = {alert.psn_hash: alert for alert in persons.alerts if alert.psn_hash}
        code_alerts = [_link_earlier(alert, raised) for alert in code_alerts]
    alerts = routed.alerts + code_alerts + persons.alerts
    alerts.sort(key=lambda alert: alert.seq)
    return alerts


def ledger_contents(ledger: Ledger) -> tuple[object, ...]:
    assert isinstance(ledger, MemoryLedger)
    return (ledger.codes, ledger.messages, ledger.records, ledger.sales, ledger.persons,
            ledger.links)


def both_ways(log: Path, catalog: Path, batch: int) -> tuple[list[Alert], list[Alert]]:
    config = RuleConfig(catalog=load_catalog(catalog))
    parsed = messages(log)
    worker, offline = Pipeline(MemoryLedger(), config), Pipeline(MemoryLedger(), config)
    by_stages: list[Alert] = []
    by_process: list[Alert] = []
    for start in range(0, len(parsed), batch):
        by_stages += staged(worker, parsed[start:start + batch])
        by_process += offline.process(parsed[start:start + batch])
    assert ledger_contents(offline.ledger) == ledger_contents(worker.ledger)
    return by_stages, by_process


@pytest.mark.parametrize("batch", [1, 7, 2000])
@pytest.mark.parametrize("log", LOGS, ids=[f"{p.parent.name}/{p.stem}" for p in LOGS])
def test_process_raises_what_the_stages_raise(log: Path, batch: int) -> None:
    by_stages, by_process = both_ways(log, DATA / "catalog.csv", batch)
    assert by_process == by_stages


@pytest.mark.parametrize("batch", [50, 2000])
def test_process_raises_what_the_stages_raise_on_a_simulated_run(month: Path, batch: int) -> None:
    by_stages, by_process = both_ways(month / "messages.jsonl", month / "catalog.csv", batch)
    assert {str(alert.rule) for alert in by_stages} >= {"FLOWBACK", "DUPLICATE_SALE", "HOARDING"}
    assert by_process == by_stages


@pytest.mark.parametrize(("entries", "reason"), [
    ("83857930000000000001", "input.selinfo.drugtracinfo is not a list"),
    (["83857930000000000001"], "input.selinfo.drugtracinfo has an entry that is not an object"),
    ([{"drug_trac_codg": "83857930000000000001"}, {}],
     "input.selinfo.drugtracinfo entry lacks a string drug_trac_codg"),
    ([{"drug_trac_codg": 83857930000000000001}],
     "input.selinfo.drugtracinfo entry lacks a string drug_trac_codg"),
    ([{"drug_trac_codg": "83857930000000000001"}, [1]],
     "input.selinfo.drugtracinfo has an entry that is not an object"),
])
def test_a_bad_code_list_is_named(entries: object, reason: str) -> None:
    message = factory.sale([factory.code(1)])
    message["input"]["selinfo"]["drugtracinfo"] = entries
    with pytest.raises(BadInput) as caught:
        parse(message, PSN_KEY)
    assert caught.value.reason == reason


def test_a_good_code_list_is_kept_in_order() -> None:
    codes = [factory.code(n) for n in (3, 1, 2, 1)]
    assert parse(factory.sale(codes), PSN_KEY).raw_codes == tuple(codes)


@pytest.mark.parametrize("jobs", [1, 2])
def test_check_reports_progress_up_to_the_whole_file(month: Path, jobs: int) -> None:
    log = month / "messages.jsonl"
    seen: list[int] = []
    stats = run_check(log, RuleConfig(catalog=load_catalog(month / "catalog.csv")), PSN_KEY,
                      io.BytesIO(), io.StringIO(), progress=seen.append, jobs=jobs)
    assert len(seen) >= stats.messages // 2000
    assert seen == sorted(seen) and seen[0] > 0
    assert seen[-1] == log.stat().st_size


def test_two_processes_write_what_one_writes(month: Path, tmp_path: Path) -> None:
    log = tmp_path / "with_bad_lines.jsonl"
    lines = (month / "messages.jsonl").read_bytes().splitlines(keepends=True)
    lines[5:5] = [b"{not json\n", b"\n", b'{"infno": "3505"}\n']
    lines.insert(len(lines) // 2, b"[1, 2]\n")
    log.write_bytes(b"".join(lines))
    config = RuleConfig(catalog=load_catalog(month / "catalog.csv"))
    runs = []
    for jobs in (1, 2):
        out, err = io.BytesIO(), io.StringIO()
        stats = run_check(log, config, PSN_KEY, out, err, batch=500, jobs=jobs)
        alerts = [orjson.loads(line) for line in out.getvalue().splitlines()]
        for alert in alerts:
            del alert["detected_at"]
        runs.append((alerts, err.getvalue(), stats))
    (one, one_err, one_stats), (two, two_err, two_stats) = runs
    assert len(one) > 10 and one == two
    assert one_err.count("skipped bad line") == 3 and one_err == two_err
    assert one_stats == two_stats and one_stats.bad == 3


def test_two_processes_report_a_log_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(CheckFailed, match="IsADirectoryError"):
        run_check(tmp_path, RuleConfig(), PSN_KEY, io.BytesIO(), io.StringIO(), jobs=2)


def test_the_reading_process_stops_when_writing_fails(month: Path) -> None:
    import multiprocessing

    class ClosedPipe(io.BytesIO):
        def write(self, data: object) -> int:
            raise BrokenPipeError("reader went away")

    config = RuleConfig(catalog=load_catalog(month / "catalog.csv"))
    with pytest.raises(BrokenPipeError):
        run_check(month / "messages.jsonl", config, PSN_KEY, ClosedPipe(), io.StringIO(),
                  batch=100, jobs=2)
    assert multiprocessing.active_children() == []
