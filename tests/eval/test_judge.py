"""EChat-eval judges: the rubric on EChat-mini's reply grammar, the LLM judge against a local HTTP server
(faults included), and the paper's reference numbers."""

import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from echat.data.mini.text import AGE_CLOSERS, EVENT_OPENERS, TEMPLATES, all_sentences, reply_text
from echat.eval.judge import (
    CATEGORIES,
    JUDGE_PROMPT_VERSION,
    JudgeItem,
    LLMJudge,
    RubricJudge,
    Verdict,
    item_category,
    judge_messages,
    parse_verdict,
    reference_results,
)

SENTENCES = all_sentences()
SECRET = "sk-test-SECRET-4242"


def mini_item(age="<ADULT>", emotion="<NEUTRAL>", event="<OTHER>", template=0, category=None):
    """(item, intended reply, intended reply emotion) of one EChat-mini sentence said with these cues."""
    sentence = next(s for s in SENTENCES if s.template == template)
    cues = {"age": age, "gender": "<FEMALE>", "emotion": emotion, "event": event}
    tag, reply = reply_text(sentence, age, emotion, event, random.Random(0))
    item = JudgeItem(f"item{template}", category or item_category(cues), sentence.text, cues, reply, tag)
    return item, reply, tag


# ----------------------------------------------------------------------------------------------
# item_category and the rubric
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cues", "category"), [
    ({"age": "<ADULT>", "emotion": "<NEUTRAL>", "event": "<OTHER>"}, "emotion"),
    ({"age": "<ADULT>", "emotion": "<SAD>", "event": "<OTHER>"}, "emotion"),
    ({"age": "<CHILD>", "emotion": "<NEUTRAL>", "event": "<OTHER>"}, "age"),
    ({"age": "<OLD>", "emotion": "<NEUTRAL>"}, "age"),
    ({"age": "<ADULT>", "emotion": "<NEUTRAL>", "event": "<COUGH>"}, "event"),
    ({"age": "<ADULT>", "emotion": "<SAD>", "event": "<CRY>"}, "event"),  # crying sets the reply emotion
    ({"age": "<ADULT>", "emotion": "<HAPPY>", "event": "<LAUGH>"}, "event"),
    ({"age": "<ADULT>", "emotion": "<SAD>", "event": "<COUGH>"}, "multi"),  # an opener, and the emotion's reply
    ({"age": "<CHILD>", "emotion": "<ANGRY>", "event": "<OTHER>"}, "multi"),
    ({"age": "<OLD>", "emotion": "<NEUTRAL>", "event": "<SCREAM>"}, "multi"),
    ({"gender": "<FEMALE>"}, "emotion"),
    ({}, "emotion"),
])
def test_item_category(cues, category):
    assert item_category(cues) == category
    assert category in CATEGORIES


@pytest.mark.parametrize("cues", [
    ("<ADULT>", "<NEUTRAL>", "<OTHER>"), ("<ADULT>", "<SAD>", "<OTHER>"), ("<CHILD>", "<HAPPY>", "<OTHER>"),
    ("<OLD>", "<FEAR>", "<SNEEZE>"), ("<ADULT>", "<ANGRY>", "<CRY>"), ("<CHILD>", "<SURPRISE>", "<SCREAM>"),
    ("<ADULT>", "<NEUTRAL>", "<LAUGH>"), ("<OLD>", "<SAD>", "<THROAT_CLEARING>"),
])
def test_intended_reply_scores_five(cues):
    item, reply, tag = mini_item(*cues)
    verdict = RubricJudge().judge(item, reply, tag)
    assert verdict == Verdict(5, "deciding cues acknowledged, reply emotion right, on topic", "rubric-v1")


def test_every_intended_reply_of_a_template_scores_five():
    judge = RubricJudge()
    for sentence in SENTENCES[::9]:
        for age in AGE_CLOSERS:
            tag, reply = reply_text(sentence, age, "<SAD>", "<COUGH>", random.Random(1))
            cues = {"age": age, "emotion": "<SAD>", "event": "<COUGH>"}
            item = JudgeItem("k", item_category(cues), sentence.text, cues, reply, tag)
            assert judge.judge(item, reply, tag).score == 5, reply


def test_wrong_reply_emotion_loses_the_emotion_and_cue_points():
    item, reply, _ = mini_item(emotion="<SAD>")
    assert item.category == "emotion"
    wrong = RubricJudge().judge(item, reply, "<HAPPY>")
    assert wrong.score == 2
    assert "reply emotion <HAPPY> (intended <COMFORTING>)" in wrong.reason
    unknown = RubricJudge().judge(item, reply, None)  # no emotion read counts as wrong
    assert unknown.score == 2 and "reply emotion unknown" in unknown.reason


def test_missing_age_closer_loses_the_cue_points():
    item, reply, tag = mini_item(age="<CHILD>")
    assert item.category == "age" and AGE_CLOSERS["<CHILD>"] in reply
    verdict = RubricJudge().judge(item, reply.replace(AGE_CLOSERS["<CHILD>"], ""), tag)
    assert verdict.score == 3
    assert verdict.reason == "missed: age <CHILD> not acknowledged as intended"
    wrong_age = RubricJudge().judge(item, reply.replace(AGE_CLOSERS["<CHILD>"], AGE_CLOSERS["<OLD>"]), tag)
    assert wrong_age.score == 3


def test_missing_closer_in_a_multi_item_loses_half_the_cue_points():
    item, reply, tag = mini_item(age="<OLD>", emotion="<SAD>")
    assert item.category == "multi"
    verdict = RubricJudge().judge(item, reply.replace(AGE_CLOSERS["<OLD>"], ""), tag)
    assert verdict.score == 4  # 1 + round(2 x 1/2) + 1 + 1
    points = RubricJudge().points(item, reply.replace(AGE_CLOSERS["<OLD>"], ""), tag)
    assert points.checks == {"emotion": True, "age": False}
    assert (points.cue_points, points.emotion_point, points.content_point, points.score) == (1, 1, 1, 4)
    assert points.intended_content == points.reply_content == {"report"}


def test_missing_event_opener_loses_the_cue_points():
    item, reply, tag = mini_item(event="<COUGH>")
    assert item.category == "event" and reply.startswith(EVENT_OPENERS["<COUGH>"])
    verdict = RubricJudge().judge(item, reply.removeprefix(EVENT_OPENERS["<COUGH>"]), tag)
    assert verdict.score == 3 and "event <COUGH> not acknowledged" in verdict.reason


def test_event_that_sets_the_reply_emotion_needs_that_emotion():
    item, reply, tag = mini_item(emotion="<HAPPY>", event="<CRY>")
    assert tag == "<COMFORTING>" and item.category == "event"
    assert RubricJudge().judge(item, reply, "<HAPPY>").score == 2  # opener present, emotion wrong: check fails


def test_spurious_closer_costs_a_check():
    item, reply, tag = mini_item(emotion="<HAPPY>")
    verdict = RubricJudge().judge(item, f"{reply} {AGE_CLOSERS['<CHILD>']}", tag)
    assert verdict.score == 4 and verdict.reason == "missed: spurious age closer"


def test_off_topic_reply_loses_the_content_point():
    item, _, tag = mini_item(emotion="<SAD>", template=0)
    other, other_reply, _ = mini_item(emotion="<SAD>", template=4)
    verdict = RubricJudge().judge(item, other_reply, tag)
    assert verdict.score == 4 and verdict.reason.startswith("missed: off topic (missing: ")


def test_another_slot_of_the_same_template_is_off_topic():
    template, slots, topic = TEMPLATES[11]  # "I have to speak in front of {x}."
    item = JudgeItem("k", "emotion", template.format(x=slots[0]), {"emotion": "<HAPPY>"},
                     f"How exciting, {topic.format(x=slots[0])}! Well done.", "<HAPPY>")
    swapped = f"How exciting, {topic.format(x=slots[1])}! Well done."
    assert RubricJudge().judge(item, swapped, "<HAPPY>").score == 4


def test_reply_without_topic_matches_only_a_reply_without_one():
    item, reply, tag = mini_item(event="<SCREAM>")
    assert tag == "<AFRAID>"
    assert RubricJudge().judge(item, reply, tag).score == 5
    assert RubricJudge().judge(item, f"{reply} Tell me about the wallet.", tag).score == 4


def test_empty_reply_scores_one():
    item, _, tag = mini_item(emotion="<SAD>")
    assert RubricJudge().judge(item, "  <COMFORTING> ", tag) == Verdict(1, "empty reply", "rubric-v1")


def test_gender_category_is_judged_by_the_reply_emotion():
    item, reply, tag = mini_item(emotion="<SAD>", category="gender")
    assert RubricJudge().judge(item, reply, tag).score == 5
    assert RubricJudge().judge(item, reply, "<NEUTRAL>").score == 2


def test_item_without_intended_emotion_is_not_penalised_for_it():
    item, reply, _ = mini_item(emotion="<SAD>")
    item = JudgeItem(item.key, item.category, item.transcript, item.cues, item.reference_reply, None)
    verdict = RubricJudge().judge(item, reply, None)
    assert verdict.score == 5 and "not checked" in verdict.reason


def test_rubric_is_deterministic():
    item, reply, _ = mini_item(age="<CHILD>", emotion="<FEAR>", event="<SIGH>")
    verdicts = {RubricJudge().judge(item, reply.upper(), "<HAPPY>") for _ in range(5)}
    assert len(verdicts) == 1


# ----------------------------------------------------------------------------------------------
# The LLM judge against a local server
# ----------------------------------------------------------------------------------------------


def completion(content: str) -> tuple[int, dict, str, float]:
    """A 200 chat-completions response whose message content is ``content``."""
    return 200, {}, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}), 0.0


OK = completion('{"score": 4, "reason": "Warm, but it misses the cough."}')


class ScriptedServer:
    """A local chat-completions server answering with ``responses`` in turn (the last one repeats);
    each response is (status, headers, body, delay in s). ``requests`` records (path, headers, JSON body)."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a client gone after a timeout is expected
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()

    def next_response(self):
        with self.lock:
            return self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]

    def _handler(self):
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                scripted.requests.append((self.path, dict(self.headers), body))
                status, headers, text, delay = scripted.next_response()
                time.sleep(delay)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(text.encode("utf-8"))

            def log_message(self, *args):
                pass

        return Handler

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(*responses):
        servers.append(ScriptedServer(*responses))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("ECHAT_JUDGE_API_KEY", SECRET)
    return SECRET


def llm(url, **kwargs):
    """A judge with test-sized timeout and backoff."""
    return LLMJudge(url, "judge-model", **{"timeout": 2.0, "retries": 2, "backoff": 0.01, **kwargs})


def test_llm_judge_scores_and_sends_our_prompt(serve, api_key):
    server = serve(OK)
    item, reply, tag = mini_item(emotion="<SAD>", event="<COUGH>")
    judge = llm(server.url)
    verdict = judge.judge(item, reply, tag)
    assert verdict == Verdict(4, "Warm, but it misses the cough.", f"llm:judge-model:{JUDGE_PROMPT_VERSION}")
    assert judge.calls == 1
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == f"Bearer {api_key}"
    assert body["model"] == "judge-model" and body["temperature"] == 0
    assert body["messages"] == judge_messages(item, reply, tag)
    user = body["messages"][1]["content"]
    assert "Category under test: multi" in user and item.transcript in user and reply in user
    assert "sound event = cough" in user and "emotion: comforting" in user


def test_no_key_no_authorization_header(serve, monkeypatch):
    monkeypatch.delenv("ECHAT_JUDGE_API_KEY", raising=False)
    server = serve(OK)
    item, reply, tag = mini_item()
    assert llm(server.url).judge(item, reply, tag).score == 4
    assert "Authorization" not in server.requests[0][1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_down_fails_after_the_retries(api_key):
    judge = llm(f"http://127.0.0.1:{free_port()}/v1", retries=2)
    item, reply, tag = mini_item()
    start = time.perf_counter()
    verdict = judge.judge(item, reply, tag)
    assert verdict.score is None and verdict.error.startswith("no answer from")
    assert judge.calls == 3 and time.perf_counter() - start < 2
    assert api_key not in verdict.error


def test_slow_server_times_out(serve):
    server = serve((*OK[:3], 1.0))
    judge = llm(server.url, timeout=0.2, retries=1)
    verdict = judge.judge(*mini_item()[:1], "I see.", "<NEUTRAL>")
    assert verdict.score is None and "timed out" in verdict.error
    assert judge.calls == 2


@pytest.mark.parametrize("first", [(429, {"Retry-After": "0"}, "slow down", 0.0), (500, {}, "boom", 0.0),
                                   (503, {}, "busy", 0.0)])
def test_retryable_error_then_success(serve, first):
    server = serve(first, OK)
    judge = llm(server.url)
    item, reply, tag = mini_item()
    assert judge.judge(item, reply, tag).score == 4
    assert judge.calls == 2


def test_long_retry_after_and_client_errors_are_not_retried(serve):
    item, reply, tag = mini_item()
    for response, expected in [((429, {"Retry-After": "3600"}, "later", 0.0), "Retry-After 3600 s"),
                               ((400, {}, "bad request", 0.0), "HTTP 400")]:
        judge = llm(serve(response, OK).url)
        verdict = judge.judge(item, reply, tag)
        assert verdict.score is None and expected in verdict.error and judge.calls == 1


def test_non_json_body_is_a_failure_not_a_zero(serve):
    judge = llm(serve((200, {}, "<html>gateway says hi</html>", 0.0)).url)
    verdict = judge.judge(*mini_item()[:1], "I see.", "<NEUTRAL>")
    assert verdict.score is None and "not a chat-completions response" in verdict.error
    assert judge.calls == 1


@pytest.mark.parametrize(("content", "error"), [
    ("I would give it a 4.", "not JSON"),
    ('{"score": 7, "reason": "great"}', "not an integer from 1 to 5"),
    ('{"score": 0, "reason": "bad"}', "not an integer from 1 to 5"),
    ('{"score": 4.5}', "not an integer from 1 to 5"),
    ('{"score": "4"}', "not an integer from 1 to 5"),
    ('{"score": true}', "not an integer from 1 to 5"),
    ('{"reason": "no score"}', "no score"),
    ("[4]", "no score"),
    ('{"score": 3, "reason": ["a", "b"]}', "not a string"),
])
def test_unparseable_answers_fail(serve, content, error):
    judge = llm(serve(completion(content)).url)
    verdict = judge.judge(*mini_item()[:1], "I see.", "<NEUTRAL>")
    assert verdict.score is None and error in verdict.error and verdict.reason == "judge failed"
    assert judge.calls == 1


def test_fenced_json_and_multiline_reason_parse():
    verdict = parse_verdict('```json\n{"score": 5, "reason": "Kind\\n and apt."}\n```', "j")
    assert verdict == Verdict(5, "Kind and apt.", "j")


def test_cache_makes_a_rerun_free_and_identical(serve, api_key, tmp_path):
    server = serve(completion('{"score": 3, "reason": "ok"}'), completion('{"score": 5, "reason": "apt"}'))
    items = [mini_item(emotion="<SAD>"), mini_item(age="<CHILD>", template=3)]
    first = llm(server.url, cache_dir=tmp_path)
    verdicts = [first.judge(item, reply, tag) for item, reply, tag in items]
    assert first.calls == 2 and [v.score for v in verdicts] == [3, 5]
    again = llm(server.url, cache_dir=tmp_path)
    assert [again.judge(item, reply, tag) for item, reply, tag in items] == verdicts
    assert again.calls == 0
    changed = mini_item(emotion="<SAD>")
    assert again.judge(changed[0], changed[1], "<HAPPY>").score == 5 and again.calls == 1  # another reply emotion
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 3
    assert all(api_key not in f.read_text() for f in files)


def test_failures_are_not_cached(serve, tmp_path):
    item, reply, tag = mini_item()
    llm(serve(completion("not json")).url, cache_dir=tmp_path).judge(item, reply, tag)
    assert not list(tmp_path.iterdir())
    judge = llm(serve(OK).url, cache_dir=tmp_path)
    assert judge.judge(item, reply, tag).score == 4 and judge.calls == 1


def test_api_key_never_in_error_messages(serve, api_key):
    judge = llm(serve((401, {}, f"invalid key {api_key}", 0.0)).url)
    verdict = judge.judge(*mini_item()[:1], "I see.", "<NEUTRAL>")
    assert verdict.score is None and "HTTP 401" in verdict.error
    assert api_key not in verdict.error and "***" in verdict.error


# ----------------------------------------------------------------------------------------------
# The paper's numbers
# ----------------------------------------------------------------------------------------------


def test_reference_results_load():
    results = reference_results()
    assert results["columns"] == list(CATEGORIES)
    assert "transcribed by eye" in results["transcription"] and "GPT-4o" in results["scale"]
    auto = {row["system"]: row for row in results["tables"]["echat_eval_gpt4o"]["rows"]}
    assert len(auto) == 10 and sum(row["kind"] == "ablation" for row in auto.values()) == 3
    assert list(auto["OSUM-EChat"]["scores"].values()) == [58.0, 63.1, 62.7, 87.1, 72.0]
    assert auto["Qwen2.5-Omni"]["scores"]["event"] is None
    assert auto["OSUM-EChat − Dual Think − U-Driven"]["scores"]["event"] == 10.4
    human = {row["system"]: row for row in results["tables"]["echat_eval_human"]["rows"]}
    assert list(human["OSUM-EChat"]["scores"].values()) == [72.0, 68.9, 65.8, 88.0, 73.3]


def test_reference_results_missing_says_where_they_are_read_from(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json: the paper's EChat-eval tables .* source checkout"):
        reference_results(tmp_path / "missing.json")
