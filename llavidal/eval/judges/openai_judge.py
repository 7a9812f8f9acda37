"""A judge on any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp server, Ollama, ...).

- The model id is required and recorded in every result, with the model name the server reports. On
  OpenAI's own endpoint an alias without a snapshot date (``gpt-4o``) is refused unless
  ``allow_unpinned=True``: aliases move to new models and scores drift between runs.
- The API key is read from the environment only (``OPENAI_API_KEY``, or the variable named by
  ``api_key_env``); it is never logged, stored in results or in the cache. Local servers (``base_url``
  not OpenAI's) need no key. Credentials inside ``base_url`` (``http://user:secret@host/v1``, ``?key=...``)
  are redacted wherever the URL is recorded or shown (:func:`redact_url`).
- ``temperature=0`` and a fixed ``seed`` by default.
- Retries are ours and bounded: the client's own retries are disabled (``max_retries=0``), and a call is
  tried at most ``1 + max_retries`` times on 408/409/429/5xx, timeouts and connection errors, sleeping
  ``min(backoff_max, backoff_base * 2**attempt)`` scaled by a random factor in [0.5, 1] (jitter), or
  the server's ``Retry-After`` when that is longer (capped at ``backoff_max``). 401/403/404 stop the run
  (:class:`JudgeConfigError`); other 4xx fail that item.
- ``concurrency`` calls in flight at most (an asyncio semaphore, held during backoff so that a rate-limited
  server sees less traffic, not more).
- Every completed reply is committed to the sqlite cache at once (see :mod:`.cache`); identical
  requests in one run are sent once.
- A reply that cannot be parsed is ``malformed`` and a call that never succeeded is ``failed``: both are
  missing judgements (``score=None``), never 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llavidal.eval.judges.base import JudgeConfigError, JudgeItem, Judgement
from llavidal.eval.judges.cache import JudgeCache, cache_key
from llavidal.eval.judges.parsing import parse_judge_reply
from llavidal.eval.judges.prompts import PROMPT_VERSION, render_messages
from llavidal.utils.optional import require

logger = logging.getLogger(__name__)

OPENAI_HOST = "api.openai.com"
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")  # gpt-4o-2024-08-06, gpt-4-0613


_SECRET_PARAMETER = re.compile(r"key|token|secret|pass|auth|sig|credential|session", re.IGNORECASE)


def redact_url(url: str | None) -> str | None:
    """``url`` as it may be recorded: a password in it becomes ``***`` (``http://user:***@host/v1``), and
    so does the value of any query parameter whose name looks like a credential (``?key=***``)."""
    if not url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable base URL, not shown>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if has_password else f"***@{host}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{name}={'***' if _SECRET_PARAMETER.search(name) else value}" for name, value in pairs)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def default_cache_path() -> Path:
    root = os.environ.get("LLAVIDAL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "llavidal"
    )
    return Path(root) / "judge_cache.sqlite"


def reply_keys(criterion: str) -> tuple[str, ...]:
    if criterion == "zeroshot":
        return ("pred", "score")
    if criterion == "mcq":
        return ("choice",)
    return ("score",)


def judgement_from_reply(item: JudgeItem, reply: str, judge_id: str, prompt_version: str, **extra: Any) -> Judgement:
    """Parse a reply into a judgement; unparseable replies are ``malformed`` with ``score=None``."""
    values, reason = parse_judge_reply(reply, reply_keys(item.criterion))
    if values is None:
        return Judgement(
            score=None,
            status="malformed",
            error=reason,
            reply=reply,
            judge_id=judge_id,
            prompt_version=prompt_version,
            **extra,
        )
    if item.criterion == "mcq":
        choice = values["choice"]
        return Judgement(
            score=None,
            pred=None if choice == "none" else choice,
            reply=reply,
            judge_id=judge_id,
            prompt_version=prompt_version,
            **extra,
        )
    return Judgement(
        score=values["score"],
        pred=values.get("pred"),
        reply=reply,
        judge_id=judge_id,
        prompt_version=prompt_version,
        **extra,
    )


@dataclass
class OpenAIJudge:
    """Judge through an OpenAI-compatible ``/chat/completions`` endpoint (see the module docstring)."""

    model: str
    """Pinned judge model id (``gpt-4o-2024-08-06``; for local servers the name they serve)."""
    base_url: str | None = None
    """``None`` for OpenAI; ``http://127.0.0.1:8000/v1`` for vLLM, llama.cpp, Ollama (``.../v1``)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable that holds the key (the key itself is never an argument)."""
    temperature: float = 0.0
    seed: int | None = 0
    max_tokens: int | None = None
    max_retries: int = 4
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    timeout: float = 60.0
    concurrency: int = 8
    cache_path: str | Path | None = None
    """sqlite cache file; ``None`` for the user cache dir (``$LLAVIDAL_CACHE_DIR`` or ``~/.cache/llavidal``)."""
    allow_unpinned: bool = False
    show_progress: bool = False
    stats: dict[str, int] = field(default_factory=dict, init=False)
    served_models: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        if not self.model or not self.model.strip():
            raise JudgeConfigError(
                "the judge model id is required (e.g. --judge_model gpt-4o-2024-08-06); there is no default"
            )
        if self.max_retries < 0 or self.concurrency < 1 or self.timeout <= 0:
            raise JudgeConfigError("max_retries must be >= 0, concurrency >= 1 and timeout > 0")
        if self.is_openai and not _SNAPSHOT.search(self.model) and not self.allow_unpinned:
            raise JudgeConfigError(
                f"judge model {self.model!r} is an alias that OpenAI moves to newer models, so scores drift "
                "between runs. Pass a dated snapshot (e.g. gpt-4o-2024-08-06, gpt-3.5-turbo-0125), or allow "
                "it explicitly with --allow_unpinned_judge."
            )
        self.cache_path = Path(self.cache_path) if self.cache_path else default_cache_path()
        self.stats = {"items": 0, "cache_hits": 0, "requests": 0, "retries": 0, "failed": 0, "malformed": 0}

    @property
    def is_openai(self) -> bool:
        return self.base_url is None or OPENAI_HOST in self.base_url

    @property
    def judge_id(self) -> str:
        return f"openai-compatible:{self.model}"

    @property
    def prompt_version(self) -> str:
        return PROMPT_VERSION

    def __repr__(self) -> str:  # no key here, ever
        base_url = redact_url(self.base_url)
        return f"OpenAIJudge(model={self.model!r}, base_url={base_url!r}, concurrency={self.concurrency})"

    def describe(self) -> dict:
        return {
            "type": "openai-compatible",
            "judge_id": self.judge_id,
            "model": self.model,
            "served_models": sorted(self.served_models),
            "base_url": redact_url(self.base_url) or f"https://{OPENAI_HOST}/v1",
            "prompt_version": self.prompt_version,
            "temperature": self.temperature,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "max_retries": self.max_retries,
        }

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env, "")
        if key:
            return key
        if not self.is_openai:
            return "no-key"  # local servers accept any key; the client insists on one
        raise JudgeConfigError(
            f"no API key: set the environment variable {self.api_key_env} (keys are read from the environment "
            "only), or pass --base_url for a local OpenAI-compatible server"
        )

    def _request(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.seed is not None:
            request["seed"] = self.seed
        if self.max_tokens is not None:
            request["max_tokens"] = self.max_tokens
        return request

    def _backoff(self, attempt: int, error: Exception | None) -> float:
        delay = min(self.backoff_max, self.backoff_base * (2**attempt))
        delay *= 0.5 + random.random() / 2
        response = getattr(error, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), self.backoff_max))
            except ValueError:
                pass
        return delay

    async def _call(
        self, client: Any, semaphore: asyncio.Semaphore, request: dict[str, Any]
    ) -> tuple[str | None, str, int, str]:
        """(reply or None, served model, attempts, error)."""
        openai = require("openai", "the OpenAI-compatible judge")
        last_error, last_exception = "", None
        async with semaphore:
            for attempt in range(self.max_retries + 1):
                self.stats["requests"] += 1
                try:
                    response = await client.chat.completions.create(**request)
                except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as err:
                    raise JudgeConfigError(
                        f"the judge endpoint refused the request ({type(err).__name__}, HTTP {err.status_code}); "
                        f"check {self.api_key_env}, --base_url and the model id {self.model!r}"
                    ) from None
                except (openai.APITimeoutError, openai.APIConnectionError) as err:
                    last_error, last_exception = f"{type(err).__name__}", err
                except openai.APIStatusError as err:
                    last_error, last_exception = f"HTTP {err.status_code}", err
                    if not (err.status_code in (408, 409, 429) or err.status_code >= 500):
                        return None, "", attempt + 1, f"{last_error} (not retried)"
                else:
                    try:
                        content = response.choices[0].message.content or ""
                    except (AttributeError, IndexError, TypeError):
                        return None, "", attempt + 1, "response without choices[0].message.content"
                    return content, str(getattr(response, "model", "") or ""), attempt + 1, ""
                if attempt < self.max_retries:
                    self.stats["retries"] += 1
                    await asyncio.sleep(self._backoff(attempt, last_exception))
        return None, "", self.max_retries + 1, f"{last_error} after {self.max_retries + 1} attempts"

    async def ajudge(self, items: list[JudgeItem]) -> list[Judgement]:
        """Judge ``items`` (asynchronously); results are aligned with ``items``."""
        cache = JudgeCache(self.cache_path)
        try:
            return await self._ajudge(items, cache)
        finally:
            cache.close()

    async def _ajudge(self, items: list[JudgeItem], cache: JudgeCache) -> list[Judgement]:
        openai = require("openai", "the OpenAI-compatible judge")
        results: list[Judgement | None] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        requests: dict[str, dict[str, Any]] = {}
        self.stats["items"] += len(items)
        for index, item in enumerate(items):
            request = self._request(render_messages(item))
            key = cache_key(self.judge_id, self.prompt_version, request)
            cached = cache.get(key)
            if cached is not None:
                self.stats["cache_hits"] += 1
                if cached.served_model:
                    self.served_models.add(cached.served_model)
                results[index] = judgement_from_reply(
                    item, cached.reply, self.judge_id, self.prompt_version, cached=True
                )
                continue
            groups.setdefault(key, []).append(index)
            requests[key] = request
        if groups:
            client = openai.AsyncOpenAI(
                api_key=self._api_key(), base_url=self.base_url, timeout=self.timeout, max_retries=0
            )
            semaphore = asyncio.Semaphore(self.concurrency)
            progress = None
            if self.show_progress:
                from tqdm.auto import tqdm

                progress = tqdm(total=len(groups), desc=f"judge {self.model}", unit="call")

            async def run_one(key: str) -> None:
                first = items[groups[key][0]]
                reply, served, attempts, error = await self._call(client, semaphore, requests[key])
                if reply is not None:
                    cache.put(key, self.judge_id, self.prompt_version, first.criterion, reply, served)
                    if served:
                        self.served_models.add(served)
                for index in groups[key]:
                    if reply is None:
                        results[index] = Judgement(
                            score=None,
                            status="failed",
                            error=error,
                            judge_id=self.judge_id,
                            prompt_version=self.prompt_version,
                            attempts=attempts,
                        )
                    else:
                        results[index] = judgement_from_reply(
                            items[index], reply, self.judge_id, self.prompt_version, attempts=attempts
                        )
                if progress is not None:
                    progress.update(1)

            try:
                await asyncio.gather(*(run_one(key) for key in groups))
            finally:
                if progress is not None:
                    progress.close()
                await client.close()
        final = [r for r in results if r is not None]
        self.stats["failed"] += sum(1 for r in final if r.status == "failed")
        self.stats["malformed"] += sum(1 for r in final if r.status == "malformed")
        logger.info("judge %s: %s", self.judge_id, self.stats)
        return final

    def judge(self, items: list[JudgeItem]) -> list[Judgement]:
        """Synchronous entry point (runs the event loop; works inside a running loop too)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.ajudge(items))
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:  # e.g. inside Jupyter
            return pool.submit(asyncio.run, self.ajudge(items)).result()
