"""The OpenAI-compatible judge, through the real ``openai`` client over HTTP to a scripted local server."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from llavidal.eval.judges.base import JudgeConfigError, JudgeItem
from llavidal.eval.judges.cache import JudgeCache
from llavidal.eval.judges.openai_judge import OpenAIJudge
from llavidal.eval.judges.parsing import parse_judge_reply
from llavidal.eval.predictions import Prediction
from llavidal.eval.records import EvalRecord
from llavidal.eval.scoring import score_judged
from llavidal.eval.tasks import load_benchmark

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import PROXY_VARIABLES, FakeOpenAIServer  # noqa: E402


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    """Clients must talk to the local server directly, never through a proxy from the environment."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


pytest.importorskip("openai")


@pytest.fixture
def server():
    with FakeOpenAIServer(latency=0.0, slow_seconds=1.0, max_lifetime=60) as srv:
        yield srv


def make_judge(server, tmp_path, **overrides) -> OpenAIJudge:
    options = dict(
        model="judge-model-2024-01-01",
        base_url=server.url,
        cache_path=tmp_path / "cache.sqlite",
        backoff_base=0.01,
        backoff_max=0.05,
        timeout=5.0,
        max_retries=3,
        concurrency=4,
    )
    options.update(overrides)
    return OpenAIJudge(**options)


def description_data():
    records, predictions = [], []
    script = {
        "r1": ("[[score=5]] drinks", "[[score=4]] a", "[[score=4]] b"),
        "r2": ("[[score=2]] eats", "[[reply=I would rate this highly]] a", "b"),  # consistency reply malformed
        "r3": ("[[429x2]] [[score=3]] reads", "[[500x1]] [[score=1]] a", "b"),  # retried, then fine
    }
    for rid in ("r1", "r2", "r3", "r4"):
        records.append(
            EvalRecord(
                id=rid,
                video=f"{rid}.mp4",
                question=f"Describe {rid}.",
                answer="The person drinks.",
                consistency_questions=[f"What happens in {rid}?", f"What does the person do in {rid}?"],
                consistency_answer="Drinks.",
            )
        )
        if rid in script:
            main, c1, c2 = script[rid]
            predictions.append(Prediction(id=rid, outputs={"main": main, "cons1": c1, "cons2": c2}))
        else:
            predictions.append(Prediction(id=rid, status="missing_features", missing=["video"]))
    return records, predictions


def test_scores_equal_hand_computed_values_and_rerun_is_free(server, tmp_path):
    records, predictions = description_data()
    spec = load_benchmark("adl_descriptions")
    judge = make_judge(server, tmp_path)
    result = score_judged(predictions, spec, judge, records=records)

    # correctness/detail/context/temporal: r1 5, r2 2, r3 3 -> mean 10/3, x20; r4 has no prediction.
    for criterion in ("correctness", "detail", "context", "temporal"):
        block = result["criteria"][criterion]
        assert block["scaled"] == pytest.approx(20 * 10 / 3)
        assert (block["judged"], block["total"], block["missing_predictions"]) == (3, 4, 1)
    # consistency: r1 4, r2 malformed (missing, not 0), r3 1 -> mean 2.5 -> 50
    consistency = result["criteria"]["consistency"]
    assert consistency["scaled"] == pytest.approx(50.0)
    assert (consistency["judged"], consistency["judge_malformed"], consistency["missing_predictions"]) == (2, 1, 1)
    assert result["metrics"]["overall"] == pytest.approx((4 * 20 * 10 / 3 + 50) / 5)
    r2 = next(item for item in result["items"] if item["id"] == "r2")
    assert r2["scores"]["consistency"] is None and r2["status"]["consistency"] == "malformed"

    # Requests: r1 and r2 one per criterion (10); r3 three per plain criterion (2 x 429, then ok) and two
    # for consistency (1 x 500, then ok).
    assert server.count() == 5 + 5 + 4 * 3 + 2
    assert judge.stats["retries"] == 4 * 2 + 1
    assert {(e["model"], e["temperature"], e["seed"]) for e in server.log} == {("judge-model-2024-01-01", 0.0, 0)}
    assert result["judge"]["model"] == "judge-model-2024-01-01"
    assert result["judge"]["served_models"] == ["judge-model-2024-01-01"]
    assert result["judge"]["prompt_version"]

    # A rerun (new judge object, same cache) makes zero requests and gives the same result.
    before = server.count()
    again = score_judged(predictions, spec, make_judge(server, tmp_path), records=records)
    assert server.count() == before
    assert json.dumps(again, sort_keys=True) == json.dumps(result, sort_keys=True)


def test_retries_are_bounded_and_failures_are_missing(server, tmp_path):
    judge = make_judge(server, tmp_path, max_retries=2, timeout=0.3)
    items = [
        JudgeItem("correctness", "q", "a", "[[500x99]] always failing"),
        JudgeItem("correctness", "q", "a", "[[slowx99]] always too slow"),
        JudgeItem("correctness", "q", "a", "[[slowx1]] [[score=4]] slow once"),
        JudgeItem("correctness", "q", "a", "[[400x1]] bad request"),
    ]
    failing, slow, slow_once, bad = judge.judge(items)
    assert failing.status == "failed" and failing.score is None and failing.attempts == 3
    assert "HTTP 500 after 3 attempts" in failing.error
    assert slow.status == "failed" and "Timeout" in slow.error and slow.attempts == 3
    assert slow_once.ok and slow_once.score == 4.0 and slow_once.attempts == 2
    assert bad.status == "failed" and bad.attempts == 1 and "not retried" in bad.error
    keys = [e["key"] for e in server.log]
    assert sorted(keys.count(k) for k in set(keys)) == [1, 2, 3, 3]
    # Failed calls are not cached: a rerun tries them again; completed ones are not asked again.
    before = server.count()
    judge.judge(items[:1] + items[2:3])
    assert server.count() - before == 3


def test_unauthorised_stops_the_run(server, tmp_path):
    judge = make_judge(server, tmp_path)
    with pytest.raises(JudgeConfigError, match="refused the request"):
        judge.judge([JudgeItem("correctness", "q", "a", "[[401x9]]")])


def test_concurrency_is_limited_and_duplicates_are_sent_once(tmp_path):
    with FakeOpenAIServer(latency=0.15, max_lifetime=60) as server:
        judge = make_judge(server, tmp_path, concurrency=3)
        items = [JudgeItem("correctness", "q", "a", f"[[score={i % 6}]] item {i}") for i in range(9)]
        results = judge.judge(items + items[:2])  # two duplicates
        assert [r.score for r in results] == [float(i % 6) for i in range(9)] + [0.0, 1.0]
        assert server.count() == 9
        assert server.max_in_flight == 3


def test_key_comes_from_the_environment_and_is_never_written(server, tmp_path, monkeypatch, caplog):
    secret = "sk-test-secret-value-123"
    monkeypatch.setenv("MY_JUDGE_KEY", secret)
    judge = make_judge(server, tmp_path, api_key_env="MY_JUDGE_KEY")
    records, predictions = description_data()
    with caplog.at_level(logging.DEBUG):
        result = score_judged(predictions[:1], load_benchmark("adl_descriptions"), judge, records=records[:1])
    assert set(server.auth_headers) == {f"Bearer {secret}"}
    assert secret not in caplog.text
    assert secret not in json.dumps(result) and secret not in repr(judge)
    assert secret.encode() not in (tmp_path / "cache.sqlite").read_bytes()
    for wal in tmp_path.glob("cache.sqlite*"):
        assert secret.encode() not in wal.read_bytes()


def test_pinning_and_key_checks_happen_before_any_request(monkeypatch, tmp_path):
    with pytest.raises(JudgeConfigError, match="alias"):
        OpenAIJudge(model="gpt-4o", cache_path=tmp_path / "c.sqlite")
    with pytest.raises(JudgeConfigError, match="required"):
        OpenAIJudge(model="", cache_path=tmp_path / "c.sqlite")
    OpenAIJudge(model="gpt-4o", allow_unpinned=True, cache_path=tmp_path / "c.sqlite")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge = OpenAIJudge(model="gpt-4o-2024-08-06", cache_path=tmp_path / "c.sqlite")
    with pytest.raises(JudgeConfigError, match="OPENAI_API_KEY"):
        judge.judge([JudgeItem("correctness", "q", "a", "p")])


GOOD_REPLIES = [
    ("{'score': 4}", {"score": 4.0}),
    ('{"score": 3}', {"score": 3.0}),
    ("```python\n{'score': 5}\n```", {"score": 5.0}),
    ('Sure! Here is my evaluation: {"score": 2} Hope this helps.', {"score": 2.0}),
    ("{'score': 1, 'reason': \"it's missing the second action\"}", {"score": 1.0}),
    ("{score: 0}", {"score": 0.0}),
    ("score: 4", {"score": 4.0}),
    ("{'Score': '3'}", {"score": 3.0}),
]
BAD_REPLIES = [
    "I would rate this highly.",
    "{'score': 7}",
    "{'score': 'great'}",
    "{'score': True}",
    "",
    "{'rating': 4}",
]


@pytest.mark.parametrize("reply,expected", GOOD_REPLIES)
def test_parse_good_replies(reply, expected):
    assert parse_judge_reply(reply, ("score",)) == (expected, "")


@pytest.mark.parametrize("reply", BAD_REPLIES)
def test_parse_bad_replies_are_malformed(reply):
    values, reason = parse_judge_reply(reply, ("score",))
    assert values is None and reason


def test_parse_zeroshot_reply():
    assert parse_judge_reply("{'pred': 'Yes', 'score': 4}", ("pred", "score")) == ({"pred": "yes", "score": 4.0}, "")
    assert parse_judge_reply("{'pred': 'maybe', 'score': 4}", ("pred", "score"))[0] is None


def test_zeroshot_accuracy_and_score(server, tmp_path):
    spec = load_benchmark("zeroshot_qa")
    records = [EvalRecord(id=f"q{i}", video="v.mp4", question="Is it a dog?", answer="yes") for i in range(4)]
    predictions = [
        Prediction(id="q0", outputs={"main": "[[score=5]] yes"}),
        Prediction(id="q1", outputs={"main": "[[pred=no]] [[score=1]] no"}),
        Prediction(id="q2", outputs={"main": "[[score=4]] yes it is"}),
        Prediction(id="q3", outputs={"main": "[[reply={'pred': 'perhaps', 'score': 2}]]"}),
    ]
    result = score_judged(predictions, spec, make_judge(server, tmp_path), records=records)
    block = result["criteria"]["zeroshot"]
    assert (block["yes"], block["no"], block["judge_malformed"]) == (2, 1, 1)
    assert result["metrics"]["accuracy"] == pytest.approx(200 / 3)
    assert result["metrics"]["score"] == pytest.approx(10 / 3)


def test_cache_is_wal_and_keyed_by_judge_and_prompt_version(server, tmp_path):
    items = [JudgeItem("correctness", "q", "a", "[[score=2]]")]
    make_judge(server, tmp_path).judge(items)
    cache = JudgeCache(tmp_path / "cache.sqlite")
    assert cache._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(cache) == 1
    cache.close()
    other = make_judge(server, tmp_path, model="another-judge-2024-01-01")
    before = server.count()
    other.judge(items)
    assert server.count() == before + 1  # a different judge id is a different key


def test_mcq_fallback_through_the_openai_judge(server, tmp_path):
    from llavidal.eval.mcq import score_mcq

    choices = {"A": "drink water", "B": "eat food", "C": "walk"}
    records = [
        EvalRecord(
            id=f"m{i}", video="v.mp4", question="What next?", choices=choices, answer_letter="B", answer="eat food"
        )
        for i in range(3)
    ]
    replies = {
        "m0": "(B)",  # parsed deterministically: the judge is not asked
        "m1": "[[reply={'choice': 'B'}]] the person has a meal",
        "m2": "[[reply=I am not sure]] something else happens",
    }
    result = score_mcq(replies, records, judge=make_judge(server, tmp_path))
    assert server.count() == 2
    methods = {item["id"]: (item["parse_method"], item["parsed_letter"]) for item in result["items"]}
    assert methods == {"m0": ("bare", "B"), "m1": ("judge", "B"), "m2": ("none", None)}
    assert result["metrics"]["correct"] == 2 and result["metrics"]["missing"] == 1
    assert result["judge"]["model"] == "judge-model-2024-01-01"
