from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from _readme import amount_function
from aiocache import SimpleMemoryCache
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from guard import BalanceGuard, GuardEvent, InsufficientBalance, require_balance
from guard.aiohttp import (
    GUARD_KEY,
    INSUFFICIENT_BALANCE_TYPE,
    PROBLEM_CONTENT_TYPE,
    ProblemHandler,
    guard_middleware,
    guard_route,
    problem_response,
    setup_guard,
)
from guard.errors import (
    BalanceUnavailable,
    ConfigurationError,
    GuardError,
    ProviderAuthError,
)
from guard.stores import MemoryStore
from guard.testing import Fault, Route

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from aiohttp.test_utils import TestClient

    from guard.pytest_plugin import GuardEmulator
    from guard.typing import Provider

    Client = TestClient[web.Request, web.Application]
    MakeClient = Callable[[web.Application], Awaitable[Client]]

SEEN = web.AppKey("seen", list)


async def body_amount(request: web.Request) -> Any:
    return (await request.json())["amount"]


FORMS = ["setup_guard", "guard_middleware"]


@pytest.fixture(name="form", params=FORMS)
def _form(request: pytest.FixtureRequest) -> str:
    """How an app is guarded: see `guard_app`."""
    form: str = request.param
    return form


def guard_app(
    form: str,
    app: web.Application,
    guard: BalanceGuard | Callable[[], BalanceGuard] | None = None,
    **options: Any,
) -> None:
    """
    Guard *app* as *form* says: with setup_guard, which wraps the route
    handlers; or with guard_middleware, the app's guard kept under GUARD_KEY
    by a context of the app's own.
    """
    if form == "setup_guard":
        setup_guard(app, guard, **options)
        assert not app.middlewares
        return

    async def context(app: web.Application) -> AsyncIterator[None]:
        made = guard if isinstance(guard, BalanceGuard) else (guard or BalanceGuard)()
        app[GUARD_KEY] = made
        async with made:
            yield

    app.cleanup_ctx.append(context)
    app.middlewares.append(guard_middleware(**options))


def make_app(
    provider: Provider, form: str = "setup_guard", **options: Any
) -> web.Application:
    """A reseller app: POST /topup spends, GET /health does not."""
    app = web.Application()
    app[SEEN] = []

    async def topup(request: web.Request) -> web.Response:
        # Read the body again: the rule read it first.
        body = await request.json()
        request.app[SEEN].append(body)
        return web.json_response({"sent": str(body["amount"])})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_post("/topup", topup, name="topup")
    app.router.add_get("/health", health, name="health")
    options.setdefault("routes", {"topup": guard_route(provider, body_amount)})
    guard_app(form, app, lambda: BalanceGuard(retries=0), **options)
    return app


# How a guarded handler ends: the status the client sees, and whether the
# call counts as a success.
OUTCOMES = [
    ("answer 200", 200, True),
    ("answer 500", 500, False),
    ("raise 302", 302, True),
    ("raise 409", 409, False),
    ("raise RuntimeError", 500, False),
]


def ended(outcome: str) -> web.Response:
    """End a handler as *outcome* (one of `OUTCOMES`) says."""
    if outcome == "answer 200":
        return web.Response(text="sent")
    if outcome == "answer 500":
        return web.Response(status=500)
    if outcome == "raise 302":
        raise web.HTTPFound("/done")
    if outcome == "raise 409":
        raise web.HTTPConflict()
    raise RuntimeError("the provider call broke")


@pytest.fixture(name="oneclick")
def _oneclick(guard_emulator: GuardEmulator) -> Provider:
    return guard_emulator.oneclickdz


class TestRoutes:
    async def test_accepted(
        self, form: str, aiohttp_client: MakeClient, oneclick: Provider
    ) -> None:
        """A covered amount reaches the handler, which can read the body again."""
        client = await aiohttp_client(make_app(oneclick, form=form))

        response = await client.post("/topup", json={"amount": 500})

        assert 200 == response.status
        assert {"sent": "500"} == await response.json()
        assert [{"amount": 500}] == client.app[SEEN]

    async def test_refused_402(
        self,
        form: str,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        guard_emulator: GuardEmulator,
    ) -> None:
        """An amount the balance cannot cover is answered 402 problem+json."""
        guard_emulator.set_balance(oneclick, "120.50")
        client = await aiohttp_client(make_app(oneclick, form=form))

        response = await client.post("/topup", json={"amount": 500})

        assert 402 == response.status
        assert PROBLEM_CONTENT_TYPE == response.content_type
        assert {
            "type": INSUFFICIENT_BALANCE_TYPE,
            "title": "Insufficient balance",
            "status": 402,
            "detail": "oneclickdz: insufficient balance: 500 DZD required",
            "provider": "oneclickdz",
            "required": "500",
            "currency": "DZD",
        } == json.loads(await response.text())
        assert [] == client.app[SEEN]

    async def test_unguarded_route(
        self,
        form: str,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        guard_emulator: Any,
    ) -> None:
        """A route without a rule runs without a balance check."""
        client = await aiohttp_client(make_app(oneclick, form=form))

        response = await client.get("/health")

        assert 200 == response.status
        assert 0 == guard_emulator.count(Route.ONECLICKDZ_BALANCE)

    async def test_settled_after_each_call(
        self,
        form: str,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        guard_emulator: GuardEmulator,
    ) -> None:
        """Each guarded call invalidates the cached balance and releases its hold."""
        rule = guard_route(oneclick, body_amount, settle="invalidate")
        client = await aiohttp_client(
            make_app(oneclick, form=form, routes={"topup": rule})
        )

        for _ in range(2):
            assert 200 == (await client.post("/topup", json={"amount": 1})).status

        assert 2 == guard_emulator.count(Route.ONECLICKDZ_BALANCE)
        assert Decimal(0) == client.app[GUARD_KEY].held(oneclick)

    @pytest.mark.parametrize(
        ("path", "expected"),
        [("/topup/250?fee=5", 200), ("/topup/9990?fee=11", 402)],
    )
    async def test_amount_from_match_info_and_query(
        self,
        form: str,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        path: str,
        expected: int,
    ) -> None:
        """A sync amount function may read match info and query."""

        def amount(request: web.Request) -> Decimal:
            return Decimal(request.match_info["amount"]) + Decimal(request.query["fee"])

        async def handler(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/topup/{amount}", handler, name="topup")
        guard_app(form, app, routes={"topup": guard_route(oneclick, amount)})
        client = await aiohttp_client(app)

        assert expected == (await client.post(path)).status

    @pytest.mark.parametrize("amount", ["-5", "lots", True])
    async def test_bad_amount_400(
        self,
        form: str,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        amount: object,
    ) -> None:
        """An amount the client got wrong is answered 400 problem+json."""
        client = await aiohttp_client(make_app(oneclick, form=form))

        response = await client.post("/topup", json={"amount": amount})

        assert 400 == response.status
        assert PROBLEM_CONTENT_TYPE == response.content_type
        assert [] == client.app[SEEN]

    @pytest.mark.parametrize(
        "body",
        [b"not json", b'{"no_amount": 1}', b"[1]", b"\xff"],
        ids=["not-json", "missing", "list", "not-utf8"],
    )
    async def test_unreadable_amount_400(
        self,
        form: str,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        body: bytes,
    ) -> None:
        """An amount function that cannot read the request gives 400, not 500."""
        client = await aiohttp_client(make_app(oneclick, form=form))

        response = await client.post(
            "/topup", data=body, headers={"Content-Type": "application/json"}
        )

        assert 400 == response.status
        assert PROBLEM_CONTENT_TYPE == response.content_type
        assert "amount" in (await response.json(content_type=None))["detail"]
        assert [] == client.app[SEEN]

    async def test_sub_app_route_of_the_same_name(
        self,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        guard_emulator: GuardEmulator,
    ) -> None:
        """A parent's rule doesn't fire on a sub-application's route of that name."""
        guard_emulator.set_balance(oneclick, 1000)

        async def ok(request: web.Request) -> web.Response:
            return web.Response(text="sent")

        parent, sub = web.Application(), web.Application()
        parent.router.add_post("/topup", ok, name="topup")
        sub.router.add_post("/topup", ok, name="topup")
        sub.middlewares.append(
            guard_middleware(routes={"topup": guard_route(oneclick, 600)})
        )
        parent.add_subapp("/v2", sub)
        setup_guard(parent, routes={"topup": guard_route(oneclick, 600)})
        client = await aiohttp_client(parent)

        assert 200 == (await client.post("/topup")).status
        assert 200 == (await client.post("/v2/topup")).status

    async def test_one_middleware_on_parent_and_sub_app(
        self,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        guard_emulator: GuardEmulator,
    ) -> None:
        """
        One middleware object on a parent and its sub-application guards each
        route once: for the app that names it, whichever app's run came first.
        """
        guard_emulator.set_balance(oneclick, 1000)

        async def ok(request: web.Request) -> web.Response:
            return web.Response(text="sent")

        settled: list[GuardEvent] = []
        async with BalanceGuard(settle="debit", hooks=[settled.append]) as guard:
            # 600 twice on 1,000 would be refused: a double hold shows.
            middleware = guard_middleware(
                guard=guard, routes={"topup": guard_route(oneclick, 600)}
            )
            parent, sub = web.Application(), web.Application()
            parent.router.add_post("/topup", ok, name="topup")
            sub.router.add_post("/topup", ok, name="topup")
            parent.middlewares.append(middleware)
            sub.middlewares.append(middleware)
            parent.add_subapp("/v2", sub)
            client = await aiohttp_client(parent)

            for path in ("/v2/topup", "/topup", "/v2/topup", "/topup"):
                guard_emulator.set_balance(oneclick, 1000)
                await guard.invalidate(oneclick)
                assert 200 == (await client.post(path)).status, path

        assert [Decimal(600)] * 4 == [e.amount for e in settled if e.kind == "settled"]

    async def test_unknown_route_name(self, oneclick: Provider) -> None:
        """A rule for a route name the app doesn't have fails at startup."""
        app = make_app(oneclick, routes={"top-up": guard_route(oneclick, 1)})
        runner = web.AppRunner(app)

        try:
            with pytest.raises(ConfigurationError, match="top-up"):
                await runner.setup()
        finally:
            await runner.cleanup()

    async def test_fixed_amount(
        self, form: str, aiohttp_client: MakeClient, oneclick: Provider
    ) -> None:
        """A rule may carry a fixed amount."""
        app = make_app(
            oneclick, form=form, routes={"topup": guard_route(oneclick, "10001")}
        )
        client = await aiohttp_client(app)

        assert 402 == (await client.post("/topup", json={"amount": 1})).status

    @pytest.mark.parametrize(("outcome", "status", "ok"), OUTCOMES)
    async def test_settled_as_the_handler_ended(
        self,
        form: str,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        outcome: str,
        status: int,
        ok: bool,
    ) -> None:
        """
        A guarded route settles as a success on a status below 400 (answered
        or raised) and as a failure otherwise; its hold is released either way.
        """

        async def handler(request: web.Request) -> web.StreamResponse:
            return ended(outcome)

        events: list[GuardEvent] = []
        app = web.Application()
        app.router.add_post("/topup", handler, name="topup")
        guard_app(
            form,
            app,
            lambda: BalanceGuard(settle="debit", hooks=[events.append]),
            routes={"topup": guard_route(oneclick, 100)},
        )
        client = await aiohttp_client(app)

        response = await client.post("/topup", allow_redirects=False)

        assert status == response.status
        assert [ok] == [e.ok for e in events if e.kind == "settled"]
        assert Decimal(0) == client.app[GUARD_KEY].held(oneclick)

    @pytest.mark.parametrize("copy", [False, True], ids=["in process", "copied"])
    @pytest.mark.parametrize(("outcome", "status", "ok"), OUTCOMES)
    async def test_warm_call_settled_as_the_handler_ended(
        self,
        form: str,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        guard_emulator: GuardEmulator,
        outcome: str,
        status: int,
        ok: bool,
        copy: bool,
    ) -> None:
        """
        On a cached balance, with ``settle="debit"``, a success debits it
        and a failure forgets it (the next call fetches again), also when
        the store copies balances to a cache; the hold is released either
        way.
        """

        async def handler(request: web.Request) -> web.StreamResponse:
            return ended(request.query.get("outcome", "answer 200"))

        cache = SimpleMemoryCache() if copy else None
        app = web.Application()
        app.router.add_post("/topup", handler, name="topup")
        guard_app(
            form,
            app,
            lambda: BalanceGuard(settle="debit", store=MemoryStore(cache=cache)),
            routes={"topup": guard_route(oneclick, 100)},
        )
        client = await aiohttp_client(app)
        start = guard_emulator.balance(oneclick)
        assert 200 == (await client.post("/topup")).status  # fetches

        response = await client.post(
            "/topup", params={"outcome": outcome}, allow_redirects=False
        )

        assert status == response.status
        guard = client.app[GUARD_KEY]
        assert Decimal(0) == guard.held(oneclick)
        assert 1 == guard_emulator.count(Route.ONECLICKDZ_BALANCE)
        if cache is not None:  # a forgotten balance's copy is deleted too
            key = guard._track(oneclick).account.key
            assert ok == (await cache.get(key) is not None)
        balance = await guard.balance(oneclick)
        # The emulator's own balance does not move: the handler spends nothing.
        if ok:
            assert start - 200 == balance.amount
            assert 1 == guard_emulator.count(Route.ONECLICKDZ_BALANCE)
        else:
            assert start == balance.amount
            assert 2 == guard_emulator.count(Route.ONECLICKDZ_BALANCE)

    async def test_no_route_and_wrong_method(
        self,
        form: str,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        guard_emulator: Any,
    ) -> None:
        """404 and 405 stay so with rules configured, and check no balance."""
        client = await aiohttp_client(make_app(oneclick, form=form))

        for _ in range(2):
            assert 404 == (await client.post("/nowhere")).status
            assert 405 == (await client.get("/topup")).status

        assert 0 == guard_emulator.count(Route.ONECLICKDZ_BALANCE)

    async def test_rule_required_reads_the_amount(self, oneclick: Provider) -> None:
        """A rule's required() gives its fixed amount, or the one it reads."""
        request = make_mocked_request("POST", "/topup/250", match_info={"n": "250"})

        fixed = await guard_route(oneclick, "10.50").required(request)
        read = await guard_route(oneclick, lambda r: r.match_info["n"]).required(
            request
        )

        assert (Decimal("10.50"), Decimal(250)) == (fixed, read)


class TestUnavailable:
    async def test_503_with_provider_retry_after(
        self,
        form: str,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        guard_emulator: GuardEmulator,
    ) -> None:
        """A provider that cannot answer gives 503 with its Retry-After."""
        guard_emulator.fail(
            Route.ONECLICKDZ_BALANCE,
            Fault.oneclickdz(429, "RATE_LIMIT_EXCEEDED", retry_after=7),
        )
        client = await aiohttp_client(make_app(oneclick, form=form))

        response = await client.post("/topup", json={"amount": 1})

        assert 503 == response.status
        assert "7" == response.headers["Retry-After"]
        assert PROBLEM_CONTENT_TYPE == response.headers["Content-Type"]
        body = await response.json(content_type=PROBLEM_CONTENT_TYPE)
        assert 503 == body["status"]
        assert "oneclickdz" == body["provider"]

    async def test_503_default_retry_after(
        self,
        form: str,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        guard_emulator: GuardEmulator,
    ) -> None:
        """Without a hint from the provider, Retry-After is the configured one."""
        guard_emulator.fail(Route.ONECLICKDZ_BALANCE, Fault.html(502))
        client = await aiohttp_client(make_app(oneclick, form=form, retry_after=11))

        response = await client.post("/topup", json={"amount": 1})

        assert 503 == response.status
        assert "11" == response.headers["Retry-After"]

    async def test_auth_error_leaks_no_secret(
        self, form: str, aiohttp_client: MakeClient, guard_emulator: GuardEmulator
    ) -> None:
        """Refused credentials give 503 without the key or the reason."""
        wrong = guard_emulator.emulator.oneclickdz("not-the-key-s3cr3t")
        client = await aiohttp_client(make_app(wrong, form=form))

        response = await client.post("/topup", json={"amount": 1})

        text = await response.text()
        assert 503 == response.status
        assert "s3cr3t" not in text
        assert "s3cr3t" not in str(response.headers)
        assert "INVALID_ACCESS_TOKEN" not in text


class TestHandlers:
    async def test_require_balance_on_a_handler(
        self,
        form: str,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        guard_emulator: GuardEmulator,
    ) -> None:
        """A handler decorated with require_balance is answered 402 when short."""

        @require_balance(oneclick, 20000)
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text="sent")

        app = web.Application()
        guard_app(form, app)
        app.router.add_post("/send", handler)
        client = await aiohttp_client(app)

        response = await client.post("/send")

        assert 402 == response.status
        assert "20000" == (await response.json(content_type=None))["required"]

    @pytest.mark.parametrize("amount", ["-1", "abc"])
    async def test_require_balance_on_a_handler_bad_amount(
        self,
        form: str,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        amount: str,
    ) -> None:
        """A decorated handler's amount the client got wrong is answered 400."""

        @require_balance(oneclick, lambda request: request.match_info["amount"])
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text="sent")

        app = web.Application()
        guard_app(form, app)
        app.router.add_post("/send/{amount}", handler)
        client = await aiohttp_client(app)

        response = await client.post(f"/send/{amount}")

        assert 400 == response.status
        assert PROBLEM_CONTENT_TYPE == response.content_type

    async def test_handler_value_error_stays_500(
        self, form: str, aiohttp_client: MakeClient, oneclick: Provider
    ) -> None:
        """A decorated handler's own ValueError is not taken for a bad amount."""

        @require_balance(oneclick, lambda request: 1)
        async def handler(request: web.Request) -> web.Response:
            raise ValueError("the handler's own bug")

        app = web.Application()
        guard_app(form, app)
        app.router.add_post("/send", handler)
        client = await aiohttp_client(app)

        assert 500 == (await client.post("/send")).status

    async def test_error_raised_deep_in_a_handler(
        self, form: str, aiohttp_client: MakeClient
    ) -> None:
        """InsufficientBalance raised anywhere in a handler becomes 402."""

        async def handler(request: web.Request) -> web.Response:
            raise InsufficientBalance(
                provider="x",
                required=Decimal("1.10"),
                available=Decimal("0.30"),
                currency="credits",
            )

        app = web.Application()
        guard_app(form, app)
        app.router.add_get("/", handler)
        client = await aiohttp_client(app)

        body = await (await client.get("/")).json(content_type=None)

        assert "1.10" == body["required"]
        assert "available" not in body

    async def test_problem_override(
        self, form: str, aiohttp_client: MakeClient
    ) -> None:
        """A problem callable replaces the answer; returning None keeps it."""

        def problem(request: web.Request, exc: GuardError) -> web.Response | None:
            if isinstance(exc, InsufficientBalance):
                return web.json_response({"error": "topup_refused"}, status=409)
            return None

        async def short(request: web.Request) -> web.Response:
            raise InsufficientBalance(
                provider="x", required=Decimal(2), available=Decimal(1), currency="DZD"
            )

        async def down(request: web.Request) -> web.Response:
            raise BalanceUnavailable("down", provider="x", retry_after=2.5)

        app = web.Application()
        guard_app(form, app, problem=problem)
        app.router.add_get("/short", short)
        app.router.add_get("/down", down)
        client = await aiohttp_client(app)

        refused = await client.get("/short")
        unavailable = await client.get("/down")

        assert (409, {"error": "topup_refused"}) == (
            refused.status,
            await refused.json(),
        )
        assert (503, "3") == (unavailable.status, unavailable.headers["Retry-After"])

    def test_auth_cooldown_retry_after(self) -> None:
        """A 503 carries the remaining cooldown, and the bare problem media type."""
        exc = ProviderAuthError("refused", provider="x", retry_after=41.2)

        response = problem_response(exc)

        assert "42" == response.headers["Retry-After"]
        assert PROBLEM_CONTENT_TYPE == response.headers["Content-Type"]

    def test_problem_response_status(self) -> None:
        """problem_response takes another status."""
        exc = InsufficientBalance(
            provider="x", required=Decimal(2), available=Decimal(1), currency="DZD"
        )

        response = problem_response(exc, status=409)

        assert 409 == response.status
        assert response.text is not None
        assert 409 == json.loads(response.text)["status"]


class TestSetup:
    async def test_guard_opened_and_closed(
        self, aiohttp_client: MakeClient, oneclick: Provider
    ) -> None:
        """setup_guard stores the guard under GUARD_KEY and closes it on cleanup."""
        closed: list[bool] = []

        class Recording(BalanceGuard):
            async def aclose(self) -> None:
                closed.append(True)
                await super().aclose()

        guard = Recording()
        app = web.Application()
        setup_guard(app, guard)
        client = await aiohttp_client(app)

        assert guard is client.app[GUARD_KEY]
        await client.close()
        assert [True] == closed

    def test_rejects_bad_arguments(self, oneclick: Provider) -> None:
        """Wrong types fail at setup, not per request."""
        with pytest.raises(TypeError, match="RouteRule"):
            guard_middleware(routes={"topup": oneclick})  # type: ignore[dict-item]
        with pytest.raises(ValueError, match="retry_after"):
            guard_middleware(retry_after=-1)
        with pytest.raises(TypeError, match="guard"):
            setup_guard(web.Application(), "guard")  # type: ignore[arg-type]

    async def test_handlers_wrapped_not_a_middleware(
        self, aiohttp_client: MakeClient, oneclick: Provider
    ) -> None:
        """
        setup_guard installs no middleware (any one costs every request),
        yet answers guard errors from every route, sub-applications' too.
        """

        async def short(request: web.Request) -> web.Response:
            raise InsufficientBalance(
                provider="x", required=Decimal(2), available=Decimal(1), currency="DZD"
            )

        parent, sub = web.Application(), web.Application()
        parent.router.add_get("/short", short)
        sub.router.add_get("/short", short)
        parent.add_subapp("/sub", sub)
        setup_guard(parent)
        client = await aiohttp_client(parent)

        assert [] == [*parent.middlewares, *sub.middlewares]
        # What tools read off a route's handler is the handler's.
        for app in (parent, sub):
            handler = next(iter(app.router.routes())).handler
            assert ("short", short) == (handler.__name__, handler.__wrapped__)  # type: ignore[attr-defined]
        assert 402 == (await client.get("/short")).status
        assert 402 == (await client.get("/sub/short")).status

    async def test_the_nearest_setup_answers(self, aiohttp_client: MakeClient) -> None:
        """
        With setup_guard on an app and on its sub-application, a route's
        errors are answered by its own app's, as middlewares would.
        """

        def answering(status: int) -> ProblemHandler:
            def problem(request: web.Request, exc: GuardError) -> web.Response:
                return web.Response(status=status)

            return problem

        async def down(request: web.Request) -> web.Response:
            raise BalanceUnavailable("down", provider="x")

        parent, sub = web.Application(), web.Application()
        parent.router.add_get("/down", down)
        sub.router.add_get("/down", down)
        setup_guard(sub, problem=answering(418))
        parent.add_subapp("/sub", sub)
        setup_guard(parent, problem=answering(409))

        client = await aiohttp_client(parent)

        assert 409 == (await client.get("/down")).status
        assert 418 == (await client.get("/sub/down")).status

    async def test_class_based_view(
        self,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        guard_emulator: GuardEmulator,
    ) -> None:
        """
        A rule guards a route served by a class-based view, and a view's own
        guard errors are answered; the route's handler is still a view of
        that class, for what asks at request time (aiohttp-cors does).
        """
        guard_emulator.set_balance(oneclick, 500)

        class TopUp(web.View):
            async def post(self) -> web.Response:
                return web.Response(text="sent")

        class Short(web.View):
            async def get(self) -> web.Response:
                raise InsufficientBalance(
                    provider="x",
                    required=Decimal(2),
                    available=Decimal(1),
                    currency="DZD",
                )

        app = web.Application()
        app.router.add_view("/topup", TopUp, name="topup")
        app.router.add_view("/short", Short)
        setup_guard(app, routes={"topup": guard_route(oneclick, 600)})
        client = await aiohttp_client(app)

        assert 402 == (await client.post("/topup")).status
        guard_emulator.set_balance(oneclick, 1000)
        await client.app[GUARD_KEY].invalidate(oneclick)
        assert 200 == (await client.post("/topup")).status
        assert 405 == (await client.get("/topup")).status
        assert 402 == (await client.get("/short")).status
        handlers = {route.resource.name: route.handler for route in app.router.routes()}  # type: ignore[union-attr]
        assert handlers["topup"] is not TopUp
        assert issubclass(handlers["topup"], TopUp)  # type: ignore[arg-type]
        assert ("TopUp", TopUp) == (
            handlers["topup"].__name__,
            handlers["topup"].__wrapped__,  # type: ignore[union-attr]
        )

    async def test_handler_spends_on_the_emulator(
        self,
        aiohttp_client: MakeClient,
        oneclick: Any,
        guard_emulator: GuardEmulator,
    ) -> None:
        """A guarded handler that really sends debits the emulated account."""

        async def topup(request: web.Request) -> web.Response:
            body = await request.json()
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{guard_emulator.url}/v3/mobile/send",
                    json={
                        "plan_code": "PREPAID_DJEZZY",
                        "MSSIDN": "0770000000",
                        "amount": body["amount"],
                    },
                    headers={"X-Access-Token": oneclick.api_key.reveal()},
                ) as sent,
            ):
                return web.json_response(await sent.json(), status=sent.status)

        app = web.Application()
        app.router.add_post("/topup", topup, name="topup")
        setup_guard(app, routes={"topup": guard_route(oneclick, body_amount)})
        client = await aiohttp_client(app)

        accepted = await client.post("/topup", json={"amount": 300})
        refused = await client.post("/topup", json={"amount": 9800})

        assert (200, 402) == (accepted.status, refused.status)
        assert Decimal(9700) == guard_emulator.balance(oneclick)


DEEP = b'{"amount": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def readme_app(provider: Provider, *, decorated: bool) -> web.Application:
    """
    An app whose /topup amount is read by the README's own amount function:
    through a route rule, or through require_balance on the handler.
    """
    amount = amount_function()

    async def topup(request: web.Request) -> web.Response:
        return web.Response(text="sent")

    app = web.Application()
    if decorated:
        app.router.add_post("/topup", require_balance(provider, amount)(topup))
        setup_guard(app, lambda: BalanceGuard(retries=0))
    else:
        app.router.add_post("/topup", topup, name="topup")
        setup_guard(
            app,
            lambda: BalanceGuard(retries=0),
            routes={"topup": guard_route(provider, amount=amount)},
        )
    return app


class TestHostileBodies:
    """
    Bodies a client may send to break a guarded route get 400 or 402,
    never 500.
    """

    @pytest.mark.parametrize("decorated", [False, True], ids=["rule", "decorator"])
    @pytest.mark.parametrize(
        "body",
        [
            b'{"amount": 1e4400}',
            b'{"amount": -1e4400}',
            b'{"amount": "1e4400"}',
            b'{"amount": 1e18}',
            b'{"amount": 0.0000000000000000001}',
            b'{"amount": ' + b"9" * 5000 + b"}",
            DEEP,
        ],
        ids=["1e4400", "-1e4400", "str", "1e18", "19-places", "5000-digits", "deep"],
    )
    async def test_answered_400(
        self,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        decorated: bool,
        body: bytes,
    ) -> None:
        """The README's amount function on a hostile body: 400, naming amount."""
        client = await aiohttp_client(readme_app(oneclick, decorated=decorated))

        response = await client.post(
            "/topup", data=body, headers={"Content-Type": "application/json"}
        )

        assert 400 == response.status
        assert PROBLEM_CONTENT_TYPE == response.content_type
        assert "amount" in (await response.json(content_type=None))["detail"]

    @pytest.mark.parametrize("decorated", [False, True], ids=["rule", "decorator"])
    async def test_big_but_exact_is_402(
        self, aiohttp_client: MakeClient, oneclick: Provider, decorated: bool
    ) -> None:
        """An amount guard can hold but the balance can't cover: 402."""
        client = await aiohttp_client(readme_app(oneclick, decorated=decorated))

        response = await client.post(
            "/topup",
            data=b'{"amount": 999999999999999999}',
            headers={"Content-Type": "application/json"},
        )

        assert 402 == response.status

    @pytest.mark.parametrize("decorated", [False, True], ids=["rule", "decorator"])
    async def test_amount_function_arithmetic_error(
        self, aiohttp_client: MakeClient, oneclick: Provider, decorated: bool
    ) -> None:
        """An amount function whose Decimal() raised on the query gets 400 too."""

        def amount(request: web.Request) -> Decimal:
            return Decimal(request.query["amount"])  # InvalidOperation on "abc"

        async def topup(request: web.Request) -> web.Response:
            return web.Response(text="sent")  # pragma: no cover - refused

        app = web.Application()
        if decorated:
            app.router.add_post("/topup", require_balance(oneclick, amount)(topup))
            setup_guard(app)
        else:
            app.router.add_post("/topup", topup, name="topup")
            setup_guard(app, routes={"topup": guard_route(oneclick, amount)})
        client = await aiohttp_client(app)

        response = await client.post("/topup?amount=abc")

        assert 400 == response.status
        assert "amount" in (await response.json(content_type=None))["detail"]


class TestAvailableExposure:
    """
    A 402 tells the client what was required, not the merchant's balance,
    unless the app opts in.
    """

    async def test_not_exposed_by_default(
        self,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        guard_emulator: GuardEmulator,
    ) -> None:
        """By default a 402 carries required and currency, not available."""
        guard_emulator.set_balance(oneclick, "120.53")
        client = await aiohttp_client(make_app(oneclick))

        response = await client.post("/topup", json={"amount": 500})

        assert 402 == response.status
        text = await response.text()
        body = json.loads(text)
        assert ("500", "DZD") == (body["required"], body["currency"])
        assert "available" not in body
        assert "120.53" not in text
        assert "120" not in body["detail"]

    async def test_exposed_through_setup_guard(
        self,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        guard_emulator: GuardEmulator,
    ) -> None:
        """setup_guard(expose_available=True) adds available to a 402."""
        guard_emulator.set_balance(oneclick, "120.53")
        client = await aiohttp_client(make_app(oneclick, expose_available=True))

        response = await client.post("/topup", json={"amount": 500})

        assert 402 == response.status
        body = await response.json(content_type=None)
        assert ("500", "120.53") == (body["required"], body["available"])
        assert "120.53" in body["detail"]

    async def test_exposed_through_the_middleware(
        self,
        aiohttp_client: MakeClient,
        oneclick: Provider,
        guard_emulator: GuardEmulator,
    ) -> None:
        """guard_middleware(expose_available=True) adds available to a 402."""
        guard_emulator.set_balance(oneclick, "120.53")

        @require_balance(oneclick, 500)
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text="sent")  # pragma: no cover - refused

        for expose in (False, True):
            app = web.Application(
                middlewares=[guard_middleware(expose_available=expose)]
            )
            app.router.add_post("/send", handler)
            client = await aiohttp_client(app)

            response = await client.post("/send")

            assert 402 == response.status
            body = await response.json(content_type=None)
            assert "500" == body["required"]
            assert ("120.53" if expose else None) == body.get("available")
