"""The operator's console (SPEC §7: ``GET /ops/…``, loopback or a key with scope ``ops``).

Server-rendered HTML (Jinja2, autoescaping on: model text is hostile input and is
only ever shown as text), one small script for live progress, no build step. Every
page reads projections, never the log as a whole: the one read of the log is a
rollout's own stream (``rollout-<id>``, an indexed lookup), for its prompt, answer
and event hashes.

Schedule actions (pause with a note, resume, trigger) append the same events as
``rollwatch schedules pause|resume|trigger``. A POST must carry the console's form
token (an HMAC of a secret made at start-up: a page of another origin cannot read
it) and, when the browser sends ``Origin``, come from this origin: a page elsewhere
that a logged-in operator visits cannot steer schedules through the operator's
loopback trust.

Live progress is a long poll: ``GET /ops/progress?after=SEQ&wait=S`` answers once the
log has grown past ``SEQ`` (or after ``S`` seconds) with every running run's figures.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from rollwatch import events as e
from rollwatch.config import has_control
from rollwatch.errors import BadRequest, Forbidden, NotFound, Unauthorized
from rollwatch.events import rollout_stream, schedule_stream
from rollwatch.log import get_logger
from rollwatch.report.failures import Failures, failures_by_key
from rollwatch.report.stats import wilson
from rollwatch.web import params
from rollwatch.web.access import Operators, bearer_key
from rollwatch.web.render import natural_key, templates
from rollwatch.web.render import pct as _pct
from rollwatch.web.render import usd as _usd
from rollwatch.web.scored import ScoredPart, Version, scored_part, split_answer

if TYPE_CHECKING:
    from rollwatch.abc import EventStore
    from rollwatch.config import Config
    from rollwatch.problems import Problem
    from rollwatch.projections import ProjectionDB
    from rollwatch.publication.proofs import ProofBundles
    from rollwatch.runs.services import ProblemSetLike
    from rollwatch.scoring.base import TimeLimit

log = get_logger("rollwatch.console")

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make form POSTs send Origin: null
    "Cache-Control": "no-store",
}
_JSON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_ACTIONS = {"pause": e.SchedulePaused, "resume": e.ScheduleResumed, "trigger": e.ScheduleTriggered}
_RUNS_SHOWN = 200
_ROLLOUTS_SHOWN = 2000  # a run's rollouts listed on its page (the page says when there are more)
_NOTE_MAX = 500
_FORM_MAX = 8192


@dataclass(frozen=True, slots=True)
class Rate:
    """A pass rate with its Wilson 95% interval."""

    passed: int
    n: int

    @property
    def rate(self) -> float | None:
        return self.passed / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.passed, self.n)

    def __str__(self) -> str:
        ci = self.interval
        if ci is None:
            return "–"
        return f"{_pct(self.rate)} [{_pct(ci[0])}–{_pct(ci[1])}]"


class Console:
    """The ``/ops/`` routes, over the daemon's store, projections and configuration."""

    def __init__(
        self,
        store: EventStore,
        pdb: ProjectionDB,
        config: Config,
        operators: Operators,
        *,
        problem_sets: Mapping[str, ProblemSetLike] | None = None,
        next_fires: Callable[[], Mapping[str, datetime | None]] | None = None,
        last_used: Callable[[], Mapping[str, datetime]] | None = None,
        time_limits: Callable[[], Mapping[str, TimeLimit]] | None = None,
        proofs: ProofBundles | None = None,
    ) -> None:
        """``next_fires``: the scheduler's own next fire times (computed here when absent);
        ``last_used``: when each subscriber's key last opened a route (this process);
        ``time_limits``: the scoring pool's time limits by problem version (reference
        runtimes measured in this process); ``proofs``: inclusion proofs of a rollout's
        events against the latest signed checkpoint (the integrity service's tree)."""
        self.store = store
        self.pdb = pdb
        self.config = config
        self.operators = operators
        self.problem_sets = problem_sets or {}
        self.next_fires = next_fires
        self.last_used = last_used or dict
        self.time_limits = time_limits or dict
        self.proofs = proofs
        self.env = templates()
        self._secret = secrets.token_bytes(32)
        self._catch_up_lock = anyio.Lock()

    # -- plumbing ---------------------------------------------------------------------------

    def token(self) -> str:
        """The form token every console POST must carry."""
        return hmac.new(self._secret, b"rollwatch-ops-form", hashlib.sha256).hexdigest()

    async def _gate(self, request: Request) -> None:
        if await self.operators.allows(request):
            return
        if bearer_key(request) is None:
            raise Unauthorized(
                "the operator's console: connect from a trusted address (by its IP address, localhost or this server's own name)"
                " or send a key with scope 'ops'",
                headers={"WWW-Authenticate": 'Bearer realm="rollwatch-ops"'},
            )
        raise Forbidden("this key has no 'ops' scope")

    async def _current(self) -> int:
        head = await self.store.head()
        if self.pdb.applied < head:
            async with self._catch_up_lock:
                if self.pdb.applied < head:
                    await self.pdb.catch_up(self.store)
        return head

    def _page(self, name: str, status: int = 200, **ctx: Any) -> Response:
        body = self.env.get_template(name).render(token=self.token(), **ctx)
        return HTMLResponse(body, status, headers=_HEADERS)

    def _guarded(
        self, fn: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            # 503 + Retry-After while the projections are built, as every route reading them;
            # asked before the gate, so how far in percent only (not the log's live head).
            self.pdb.not_building(detail=False)
            await self._gate(request)
            response = await fn(request)
            # The key again before a page goes out, as /v1/feed does: a page first catches the
            # read models up with the log, which waits as long as another process's catch-up
            # holds their file, and a key revoked meanwhile got the page (session 33). A POST's
            # answer is a redirect that shows nothing; what it did was done by a key let in.
            if request.method != "POST" and not await self.operators.still_allows(request):
                await self._gate(request)
            return response

        return route

    # -- queries ------------------------------------------------------------------------------

    async def _run_rows(
        self, where: str = "", args: tuple[Any, ...] = (), limit: int = _RUNS_SHOWN
    ) -> list[dict[str, Any]]:
        """Runs with their counts, newest first: one indexed read of ``runs`` and ``ops_runs``
        (counted as the events arrived), never the rollouts themselves."""
        runs = await self.pdb.fetchall(
            "SELECT r.run_id, r.schedule, r.provider, r.models, r.problem_set, r.status, r.started_at,"
            " r.finished_at, r.cost_usd, r.summary, o.planned, o.requested, o.scored, o.passed, o.failed"
            f" FROM runs r LEFT JOIN ops_runs o ON o.run_id = r.run_id {where}"
            " ORDER BY r.started_seq DESC LIMIT ?",
            (*args, limit),
        )
        out = []
        for rid, schedule, provider, models, pset, status, started, finished, cost, summary, *n in runs:
            planned, total, scored, passed, failed = (int(x or 0) for x in n)
            plan = planned or (json.loads(summary).get("planned", 0) if summary else 0) or total
            done = scored + failed
            out.append(
                {
                    "run_id": rid,
                    "schedule": schedule,
                    "provider": provider,
                    "models": json.loads(models or "[]"),
                    "problem_set": pset,
                    "status": status,
                    "started_at": started,
                    "finished_at": finished,
                    "requested": total,
                    "scored": scored,
                    "failed": failed,
                    "done": done,
                    "planned": plan,
                    "progress": min(1.0, done / plan) if plan else 0.0,
                    "rate": Rate(passed, scored),
                    "cost_usd": cost,
                }
            )
        return out

    # -- pages ----------------------------------------------------------------------------------

    async def runs(self, request: Request) -> Response:
        """The runs, newest first: status, progress, cost, pass rate with its interval."""
        params.query(request, set())
        head = await self._current()
        return self._page("ops/runs.html", runs=await self._run_rows(), head=head, title="Runs")

    async def run(self, request: Request) -> Response:
        """One run: model × problem heatmap of passes/rollouts, failures by cause (the
        model's apart from infra's)."""
        params.query(request, set())
        run_id = request.path_params["run_id"]
        head = await self._current()
        rows = await self._run_rows("WHERE r.run_id = ?", (run_id,), 1)
        if not rows:
            raise NotFound(f"no run {run_id[:80]!r}")
        cells: dict[tuple[str, str], Rate] = {}
        by_model: dict[str, list[int]] = {}
        for model, pid, scored, passed in await self.pdb.fetchall(
            "SELECT model, problem_id, sum(state = 'scored'), sum(coalesce(passed, 0)) FROM rollouts"
            " WHERE run_id = ? GROUP BY model, problem_id",
            (run_id,),
        ):
            cells[(model, pid)] = Rate(int(passed or 0), int(scored or 0))
            m = by_model.setdefault(model, [0, 0])
            m[0] += int(passed or 0)
            m[1] += int(scored or 0)
        # The model's failures apart from ours (provider, budget, scorer, sandbox), as
        # the report counts them; only once the run has ended (until then they may pass).
        failures = Failures.total((await failures_by_key(self.pdb, "run", run_id)).values())
        rollouts = await self.pdb.fetchall(
            "SELECT rollout_id, model, problem_id, sample, state, passed, cost_usd, fail_kind FROM rollouts"
            " WHERE run_id = ? ORDER BY model, problem_id, sample LIMIT ?",
            (run_id, _ROLLOUTS_SHOWN),
        )
        models = sorted(by_model, key=natural_key)
        problems = sorted({p for _, p in cells}, key=natural_key)
        rollouts = sorted(rollouts, key=lambda r: (r[1], natural_key(r[2]), r[3]))
        return self._page(
            "ops/run.html",
            run=rows[0],
            head=head,
            models=models,
            model_rates={m: Rate(v[0], v[1]) for m, v in by_model.items()},
            problems=problems,
            cells=cells,
            failures=failures,
            rollouts=rollouts,
            title=f"Run {run_id}",
        )

    async def rollout(self, request: Request) -> Response:
        """One rollout: prompt, attempts, answer with the code its verdict ran, verdicts, event hashes.

        Its facts (state, result, cost) are read from its own events, as the rollouts read
        model derives them: a read model caught up only when a page needs it was stale
        here (a page opened before the answer still said "requested" once it was scored)."""
        params.query(request, set())
        rollout_id = request.path_params["rollout_id"]
        attempts: dict[int, dict[str, Any]] = {}
        evs: list[dict[str, Any]] = []
        prompt: list[dict[str, str]] = []
        answer: str | None = None
        reasoning: str | None = None
        verdicts: list[tuple[int, e.RolloutScored | e.RolloutRescored]] = []
        first: e.RolloutRequested | None = None
        state: str | None = None
        cost: float | None = None
        fail_kind: str | None = None
        async for rec in self.store.read(stream=rollout_stream(rollout_id)):
            ev = rec.event()
            evs.append({"seq": rec.seq, "type": rec.type, "at": rec.at, "hash": rec.hash})
            if isinstance(ev, e.RolloutRequested):
                first = first or ev
                if state not in ("answered", "scored"):
                    state = "requested"
                a = attempts.setdefault(ev.attempt, {"attempt": ev.attempt})
                a.update(requested_at=rec.at, node=ev.node)
                msgs = ev.request.get("messages")
                if isinstance(msgs, list):
                    prompt = [
                        {"role": str(m.get("role", "")), "content": _text_of(m.get("content"))}
                        for m in msgs
                        if isinstance(m, dict)
                    ]
                elif "prompt" in ev.request:
                    prompt = [{"role": "user", "content": _text_of(ev.request["prompt"])}]
            elif isinstance(ev, e.RolloutResponded):
                if state != "scored":
                    state = "answered"
                cost = ev.cost_usd
                a = attempts.setdefault(ev.attempt, {"attempt": ev.attempt})
                a.update(
                    status="answered",
                    latency_ms=ev.latency_ms,
                    usage=ev.usage,
                    cost_usd=ev.cost_usd,
                    finish_reason=ev.finish_reason,
                )
                answer, reasoning = ev.text, ev.reasoning
            elif isinstance(ev, e.RolloutFailed):
                fail_kind = ev.kind
                if ev.final and state == "requested":
                    state = "failed"
                a = attempts.setdefault(ev.attempt, {"attempt": ev.attempt})
                a.update(status=f"failed: {ev.kind}", http_status=ev.status, message=ev.message)
            elif isinstance(ev, e.RolloutScored | e.RolloutRescored):
                if isinstance(ev, e.RolloutScored):
                    state = "scored"
                verdicts.append((rec.seq, ev))
        if first is None:
            raise NotFound(f"no rollout {rollout_id[:80]!r}")
        run_id, problem_id, requested_hash = first.run_id, first.problem_id, first.problem_hash
        problem_set = await self._run_problem_set(run_id)
        # The verdict that stands is the newest (as the rollouts read model's passed/score);
        # the code shown is the one it ran, under the problem version it names.
        scored = verdicts[-1][1] if verdicts else None
        version = self._version(
            problem_set, problem_id, (scored.problem_hash if scored else None) or requested_hash
        )
        part = ScoredPart(None)
        if answer is not None and scored is not None:
            code_hash = scored.detail.get("code_sha256")
            part = scored_part(
                answer, scored.extraction, code_hash if isinstance(code_hash, str) else None, version
            )
        checkpoint = await self.proofs.checkpoint() if self.proofs is not None else None
        for item in evs:
            if checkpoint is not None and item["seq"] <= checkpoint.size:
                item["proof"] = f"/public/proof/inclusion?seq={item['seq']}&size={checkpoint.size}"
        return self._page(
            "ops/rollout.html",
            rollout_id=rollout_id,
            run_id=run_id,
            provider=first.provider,
            model=first.model,
            problem_id=problem_id,
            sample=first.sample,
            state=state,
            passed=scored.passed if scored else None,
            score=scored.score if scored else None,
            cost_usd=cost,
            fail_kind=fail_kind,
            attempts=[attempts[k] for k in sorted(attempts)],
            prompt=prompt,
            answer_parts=split_answer(answer, part.span) if answer is not None else [],
            reasoning=reasoning,
            part=part,
            version=version,
            scored=scored,
            rescored=isinstance(scored, e.RolloutRescored),
            earlier=[
                {"seq": seq, "rescore": isinstance(v, e.RolloutRescored), "verdict": v}
                for seq, v in verdicts[:-1]
            ],
            scored_detail=json.dumps(scored.detail, indent=2, ensure_ascii=False) if scored else "",
            events=evs,
            checkpoint_size=checkpoint.size if checkpoint is not None else None,
            proofs=self.proofs is not None,
            title=f"Rollout {rollout_id}",
        )

    async def rollout_proof(self, request: Request) -> Response:
        """``/ops/rollouts/{id}/proof``: the rollout's proof bundle (every event, with its
        inclusion proof against the latest signed checkpoint), whether released or not:
        the operator may see what is under embargo."""
        params.query(request, set())
        rollout_id = request.path_params["rollout_id"]
        if self.proofs is None:
            raise NotFound("this daemon keeps no Merkle tree of its log (no integrity service)")
        await self._current()
        exists = await self.pdb.fetchone("SELECT 1 FROM rollouts WHERE rollout_id = ?", (rollout_id,))
        if exists is None:
            raise NotFound(f"no rollout {rollout_id[:80]!r}")
        bundle = await self.proofs.bundle(rollout_id)
        if bundle is None:
            raise NotFound("no signed checkpoint yet: the first is signed shortly after start")
        return JSONResponse(
            bundle,
            headers={
                **_JSON_HEADERS,
                "Content-Disposition": f'inline; filename="{rollout_id}.proof.json"',
            },
        )

    async def _run_problem_set(self, run_id: str) -> str | None:
        """The problem set run ``run_id`` asked (its ``RunStarted``), from the runs read model."""
        sql = "SELECT problem_set FROM runs WHERE run_id = ?"
        row = await self.pdb.fetchone(sql, (run_id,))
        if row is None:
            await self._current()
            row = await self.pdb.fetchone(sql, (run_id,))
        return None if row is None else row[0]

    def _version(self, problem_set: str | None, problem_id: str, problem_hash: str | None) -> Version:
        """The configured problem of version ``problem_hash``: the run's set's first, else
        any set's with that content hash (the hash covers the entry point)."""
        if not problem_hash:
            return Version(None)
        names = sorted(self.problem_sets, key=lambda n: n != problem_set)  # the run's set first
        for name in names:
            try:
                p = self.problem_sets[name].get(problem_id)
            except KeyError:
                continue
            if p.content_hash == problem_hash:
                return Version(problem_hash, name, p.entry_point)
        return Version(problem_hash)

    def _problems_by_id(self) -> dict[str, list[tuple[str, Problem]]]:
        """Every configured problem by id, with the sets that have it."""
        out: dict[str, list[tuple[str, Problem]]] = {}
        for name, ps in self.problem_sets.items():
            for p in ps.problems:
                out.setdefault(p.id, []).append((name, p))
        return out

    def _limit(self, problem: Problem) -> dict[str, Any]:
        """The time limit ``problem``'s answers get here, and the reference runtime behind it."""
        if problem.timeout:
            return {"seconds": problem.timeout, "source": "the problem's own timeout", "reference_ms": None}
        known = self.time_limits().get(problem.content_hash)
        if known is not None:
            source = {"calibrated": "calibrated", "default": "scoring.timeout (reference did not pass)"}
            return {
                "seconds": known.seconds,
                "source": source.get(known.source, known.source),
                "reference_ms": known.reference_ms,
            }
        if problem.reference_solution is None:
            return {
                "seconds": self.config.scoring.timeout,
                "source": "scoring.timeout (no reference)",
                "reference_ms": None,
            }
        return {
            "seconds": None,
            "source": "not measured yet (at this problem's first answer)",
            "reference_ms": None,
        }

    async def problems(self, request: Request) -> Response:
        """Every problem (configured or in the log): versions, time limit, pass rate over all models."""
        params.query(request, set())
        await self._current()
        configured = self._problems_by_id()
        totals: dict[str, dict[str, Any]] = {}
        for pid, provider, model, rollouts, scored, passed in await self.pdb.fetchall(
            "SELECT problem_id, provider, model, rollouts, scored, passed FROM ops_cells"
        ):
            t = totals.setdefault(pid, {"rollouts": 0, "scored": 0, "passed": 0, "best": None})
            t["rollouts"] += rollouts
            t["scored"] += scored
            t["passed"] += passed
            rate = Rate(passed, scored)
            if scored and (t["best"] is None or (rate.rate or 0) > (t["best"][1].rate or 0)):
                t["best"] = (f"{provider}/{model}", rate)
        versions = {
            pid: (int(n), latest)
            for pid, n, latest in await self.pdb.fetchall(
                "SELECT problem_id, count(*), max(coalesce(versioned_at, first_at)) FROM ops_problem_versions"
                " GROUP BY problem_id"
            )
        }
        rows = []
        for pid in sorted(set(configured) | set(totals), key=natural_key):
            sets = configured.get(pid, [])
            t = totals.get(pid, {"rollouts": 0, "scored": 0, "passed": 0, "best": None})
            nv, latest = versions.get(pid, (0, None))
            rows.append(
                {
                    "id": pid,
                    "title": sets[0][1].title if sets else "",
                    "sets": ", ".join(n for n, _ in sets) or "(no longer configured)",
                    "hash": sets[0][1].content_hash if sets else None,
                    "versions": nv,
                    "latest": latest,
                    "limit": self._limit(sets[0][1]) if sets else None,
                    "rollouts": t["rollouts"],
                    "rate": Rate(t["passed"], t["scored"]),
                    "best": t["best"],
                }
            )
        return self._page("ops/problems.html", problems=rows, title="Problems")

    async def problem(self, request: Request) -> Response:
        """One problem: its versions over time, its time limit here, pass rates per model."""
        params.query(request, set())
        pid = request.path_params["problem_id"]
        await self._current()
        configured = self._problems_by_id().get(pid, [])
        versions = await self.pdb.fetchall(
            "SELECT problem_hash, problem_set, first_at, versioned_at, previous_hash, verdicts, passed,"
            " time_limit_s FROM ops_problem_versions WHERE problem_id = ? ORDER BY first_seq",
            (pid,),
        )
        cells = await self.pdb.fetchall(
            "SELECT provider, model, rollouts, scored, passed FROM ops_cells WHERE problem_id = ?", (pid,)
        )
        if not configured and not versions and not cells:
            raise NotFound(f"no problem {pid[:80]!r}")
        current = {p.content_hash for _, p in configured}
        models = sorted(
            (
                {"provider": prov, "model": m, "rollouts": n, "rate": Rate(passed, scored)}
                for prov, m, n, scored, passed in cells
            ),
            key=lambda r: (-(r["rate"].rate or -1.0), natural_key(r["provider"]), natural_key(r["model"])),
        )
        return self._page(
            "ops/problem.html",
            problem_id=pid,
            configured=[
                {
                    "set": name,
                    "title": p.title,
                    "scorer": p.scorer,
                    "entry_point": p.entry_point,
                    "released": p.released.isoformat() if p.released else None,
                    "hash": p.content_hash,
                    "limit": self._limit(p),
                }
                for name, p in configured
            ],
            versions=[
                {
                    "hash": h,
                    "set": pset,
                    "first_at": first,
                    "versioned_at": vat,
                    "previous": prev,
                    "rate": Rate(passed, n),
                    "time_limit_s": tl,
                    "current": h in current,
                }
                for h, pset, first, vat, prev, n, passed, tl in versions
            ],
            models=models,
            title=f"Problem {pid}",
        )

    async def schedules(self, request: Request) -> Response:
        """Each schedule: state, next fire, last outcome, skipped and missed fires, actions."""
        q = params.query(request, {"done", "schedule"})
        # The notice an action redirects to: only for a configured schedule, as a link from
        # elsewhere with any text there showed a notice of an action nobody took.
        configured = {s.name for s in self.config.schedules}
        done = (
            {"done": q["done"], "schedule": q["schedule"]}
            if q.get("done") in _ACTIONS and q.get("schedule") in configured
            else {}
        )
        from rollwatch.scheduler import ScheduleState, load_states, make_trigger, next_fire

        await self._current()
        states = await load_states(self.pdb)
        known = self.next_fires() if self.next_fires is not None else {}
        now = datetime.now(UTC)
        rows = []
        for s in self.config.schedules:
            st = states.get(s.name, ScheduleState(name=s.name))
            active = self.config.provider(s.provider).has_key()
            if st.paused or not active:
                nxt = None
            elif s.name in known:
                nxt = known[s.name]
            else:
                running = st.last_status == "running"
                nxt = next_fire(s, make_trigger(s), st.last_fire_at, now, running=running)[0]
            rows.append(
                {
                    "name": s.name,
                    "state": "paused" if st.paused else ("active" if active else "inactive (no API key)"),
                    "paused": st.paused,
                    "trigger": f"every {s.every:g}s" if s.every else f"cron '{s.cron}' {s.timezone}",
                    "next": nxt.isoformat(timespec="seconds") if nxt else "–",
                    "last_run": st.last_run_id,
                    "last_status": st.last_status,
                    "skipped": st.skipped,
                    "missed": st.missed,
                    "note": st.note,
                }
            )
        return self._page("ops/schedules.html", schedules=rows, title="Schedules", done=done)

    async def schedule_action(self, request: Request) -> Response:
        """POST ``/ops/schedules/{name}/{action}``: append the CLI's event for that action."""
        name, action = request.path_params["name"], request.path_params["action"]
        cls = _ACTIONS.get(action)
        if cls is None:
            raise NotFound(f"no schedule action {action[:40]!r} (known: pause, resume, trigger)")
        origin = request.headers.get("origin")
        if origin is not None and origin != _own_origin(request):
            raise Forbidden("a console form must be sent from the console's own origin")
        if (
            request.headers.get("content-type", "").split(";")[0].strip()
            != "application/x-www-form-urlencoded"
        ):
            raise BadRequest("send the console's form (application/x-www-form-urlencoded)")
        size = request.headers.get("content-length", "")
        if not size.isascii() or not size.isdigit() or int(size) > _FORM_MAX:
            raise BadRequest(f"send the console's form: Content-Length up to {_FORM_MAX} bytes")
        body = await request.body()
        if len(body) > _FORM_MAX:
            raise BadRequest(f"form larger than {_FORM_MAX} bytes")
        # Parsed here rather than by Starlette's request.form(), which needs python-multipart.
        try:
            form = urllib.parse.parse_qs(body.decode(), keep_blank_values=True, strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("the form is not valid application/x-www-form-urlencoded UTF-8") from None
        token = form.get("token", [""])[-1]
        if not hmac.compare_digest(token.encode(), self.token().encode()):
            raise Forbidden("missing or stale console form token; reload the page")
        note = form.get("note", [""])[-1].strip()[:_NOTE_MAX]
        if has_control(note):
            # As `schedules pause --note` refuses it: a line break forged a row of `schedules
            # list`, an escape sequence reached the operator's terminal.
            raise BadRequest(
                "a note is one line without control characters (line breaks, tabs, escapes,"
                " bidi marks); nothing was appended"
            )
        if name not in {s.name for s in self.config.schedules}:
            raise NotFound(f"no schedule {name[:80]!r}")
        recs = await self.store.append(schedule_stream(name), [cls(schedule=name, note=note)])
        log.info("console_schedule_action", schedule=name, action=action, seq=recs[0].seq)
        return RedirectResponse(
            f"/ops/schedules?{urllib.parse.urlencode({'done': action, 'schedule': name})}", 303
        )

    async def subscribers(self, request: Request) -> Response:
        """Subscribers: names, scopes, key prefix, expiry, revocation; never a key or its hash."""
        params.query(request, set())
        await self._current()
        rows = await self.pdb.fetchall(
            "SELECT name, scopes, key_prefix, expires, added_at, revoked_at, note FROM pub_subscribers ORDER BY name"
        )
        used = self.last_used()
        subs = [
            {
                "last_used": used[n].isoformat(timespec="seconds") if n in used else None,
                "name": n,
                "scopes": ", ".join(json.loads(sc or "[]")),
                "prefix": prefix,
                "expires": exp,
                "added_at": added,
                "revoked_at": revoked,
                "note": note,
            }
            for n, sc, prefix, exp, added, revoked, note in rows
        ]
        return self._page("ops/subscribers.html", subscribers=subs, title="Subscribers")

    async def progress(self, request: Request) -> Response:
        """Long poll: the running runs' figures once the log has grown past ``after``."""
        q = params.ProgressQuery.parse(request)
        after, wait = q.after, q.wait
        head = await self.store.head()
        if head <= after and wait > 0:
            head = await self.store.wait_for_new(after, wait)
        # Nothing up to ``head`` for a key revoked by then, whether this poll waited or the
        # log had already moved on (the key was let in by a view of the keys up to a few
        # seconds old): every subscriber event up to now is read first, as on /v1/feed.
        if not await self.operators.still_allows(request):
            await self._gate(request)
        await self._current()
        # As many as the runs page can show (200), so that no row shown as running is missed
        # (the page reloads when one it shows as running is no longer listed).
        rows = await self._run_rows(
            "WHERE r.status = 'running' OR r.finished_at IS NULL", (), 2 * _RUNS_SHOWN
        )
        return JSONResponse(
            {
                "head": head,
                "runs": [
                    {
                        "run_id": r["run_id"],
                        "status": r["status"],
                        "done": r["done"],
                        "planned": r["planned"],
                        "scored": r["scored"],
                        "failed": r["failed"],
                        "progress": r["progress"],
                        "rate": str(r["rate"]),
                        "cost": _usd(r["cost_usd"]),
                    }
                    for r in rows
                ],
            },
            headers=_JSON_HEADERS,
        )

    async def asset(self, request: Request) -> Response:
        """The console's stylesheet and script (``/ops/static/console.css|js``)."""
        name = request.path_params["name"]
        kinds = {"console.css": "text/css", "console.js": "text/javascript"}
        if name not in kinds:
            raise NotFound(f"no asset {name[:40]!r}")
        from importlib.resources import files

        body = (files("rollwatch.web") / "static" / name).read_bytes()
        return Response(body, media_type=kinds[name], headers={"Cache-Control": "max-age=300", **_HEADERS})

    def routes(self) -> list[Route]:
        """The console's routes, every one behind the operator gate."""
        g = self._guarded
        return [
            Route("/ops", g(_to_ops), methods=["GET"]),
            Route("/ops/", g(self.runs), methods=["GET"]),
            Route("/ops/runs/{run_id}", g(self.run), methods=["GET"]),
            Route("/ops/rollouts/{rollout_id}", g(self.rollout), methods=["GET"]),
            Route("/ops/rollouts/{rollout_id}/proof", g(self.rollout_proof), methods=["GET"]),
            Route("/ops/schedules", g(self.schedules), methods=["GET"]),
            Route("/ops/schedules/{name}/{action}", g(self.schedule_action), methods=["POST"]),
            Route("/ops/subscribers", g(self.subscribers), methods=["GET"]),
            Route("/ops/problems", g(self.problems), methods=["GET"]),
            Route("/ops/problems/{problem_id:path}", g(self.problem), methods=["GET"]),
            Route("/ops/progress", g(self.progress), methods=["GET"]),
            Route("/ops/static/{name}", g(self.asset), methods=["GET"]),
        ]


async def _to_ops(_: Request) -> Response:
    return RedirectResponse("/ops/", 308)


def _own_origin(request: Request) -> str:
    host = request.headers.get("host", "")
    return f"{request.url.scheme}://{host}"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts (OpenAI, Anthropic)
        return "\n".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return json.dumps(content, ensure_ascii=False)


async def root_redirect(_: Request) -> Response:
    """``GET /``: the public page (SPEC §7)."""
    return RedirectResponse("/public/", 302)
