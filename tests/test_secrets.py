"""
Credentials stay secret: in every encoding a provider may echo them, and in
the frame locals error reporters capture.
"""

from __future__ import annotations

import copy
import html
import json
import logging
import pickle
import traceback
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, quote_plus

import aiohttp
import pytest
from aiohttp import web

from guard import BalanceGuard, ProviderAuthError, ProviderResponseError
from guard.providers import Clickatell, OneClickDZ, Secret
from guard.testing import Emulator

if TYPE_CHECKING:
    from collections.abc import Callable

    from guard.typing import GuardEvent

KEY = "sk_live_9f8e7d6c5b4a"
USER = "acme"
PASSWORD = "pw-4f8a1c-Zq"
API_ID = "3114159"

# Secrets with every character an encoding treats specially.
SECRETS = [
    "CTPW s3cr3t&Beta=43",
    'p+a%2F"q\\r/<x>',
    "clé ✓ ünï & ß",
    'a\'b<script>"c"</script>',
    "emoji 🔑 + tab-free",
    "(paren)*star*!bang!~tilde'",
]


def _lower_hex(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "%":
            out.append(text[i : i + 3].lower())
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


ENCODINGS: dict[str, Callable[[str], str]] = {
    "literal": lambda s: s,
    "form": lambda s: quote_plus(s, safe=""),
    "percent": lambda s: quote(s, safe=""),
    "percent-keep-slash": quote,
    "percent-lower-hex": lambda s: _lower_hex(quote(s, safe="")),
    "form-lower-hex": lambda s: _lower_hex(quote_plus(s, safe="")),
    "json-ascii": lambda s: json.dumps(s)[1:-1],
    "json-utf8": lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    "json-escaped-slash": lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
    "json-upper-hex": lambda s: json.dumps(s)[1:-1].replace("\\u00e9", "\\u00E9"),
    "uri-component": lambda s: quote(s, safe="~()*!'"),
    "html": html.escape,
    "html-decimal": lambda s: "".join(f"&#{ord(c)};" for c in s),
    "html-no-quote": lambda s: html.escape(s, quote=False),
}


def spellings(secret: str) -> set[str]:
    return {encode(secret) for encode in ENCODINGS.values()}


def leaks(text: str, *secrets: str) -> list[str]:
    return [s for secret in secrets for s in spellings(secret) if s in text]


class TestSecret:
    def test_masked_everywhere(self) -> None:
        """repr, str and format of a Secret never show the value."""
        secret = Secret(KEY)

        shown = [
            repr(secret),
            str(secret),
            f"{secret}",
            f"{secret!r}",
            f"{secret}",
        ]

        assert [] == [s for s in shown if KEY in s]
        assert "Secret('[secure]')" == repr(secret)
        assert KEY == secret.reveal()

    def test_refuses_pickle(self) -> None:
        """Neither a Secret nor a provider holding one can be pickled."""
        with pytest.raises(TypeError, match="cannot be pickled") as info:
            pickle.dumps(Secret(KEY))
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(OneClickDZ(KEY))

        assert KEY not in str(info.value)

    def test_copies_are_itself(self) -> None:
        """A Secret is immutable: copies are the same object."""
        secret = Secret(KEY)

        assert secret is copy.copy(secret) is copy.deepcopy(secret)
        with pytest.raises(AttributeError):
            secret._value = "other"  # type: ignore[misc]

    def test_equality(self) -> None:
        """Secrets compare by value with each other, never with a str."""
        assert Secret(KEY) == Secret(KEY)
        assert hash(Secret(KEY)) == hash(Secret(KEY))
        assert Secret(KEY) != Secret("other")
        assert Secret(KEY) != KEY
        assert OneClickDZ(KEY) == OneClickDZ(Secret(KEY))
        assert Secret(KEY).matches(KEY)
        assert not Secret(KEY).matches(None)

    def test_type_checked(self) -> None:
        """Only a str can be a Secret; a provider names the bad field."""
        with pytest.raises(TypeError, match="str"):
            Secret(123)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="api_key must be a str"):
            OneClickDZ(123)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="password must not be empty"):
            Clickatell(USER, Secret(""), API_ID)

    @pytest.mark.parametrize("secret", SECRETS)
    @pytest.mark.parametrize("encoding", list(ENCODINGS))
    def test_masks_every_encoding(self, secret: str, encoding: str) -> None:
        """Every spelling a body may give the secret is masked."""
        spelled = ENCODINGS[encoding](secret)

        masked = Secret(secret).mask(f"bad password={spelled}&next=1")

        assert "bad password=[secure]&next=1" == masked

    def test_empty_masks_nothing(self) -> None:
        """An empty secret leaves text alone."""
        assert "abc" == Secret("").mask("abc")


async def serve(handler: Any, path: str) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


class TestEchoedSecrets:
    """
    A provider or proxy echoing credentials, in any encoding, over real HTTP.
    """

    @pytest.mark.parametrize("secret", SECRETS)
    @pytest.mark.parametrize("encoding", list(ENCODINGS))
    async def test_clickatell_password(
        self, secret: str, encoding: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An echoed password is in no error str, repr, pickle, event or log."""
        encode = ENCODINGS[encoding]

        async def echo(request: web.Request) -> web.Response:
            raw = (await request.read()).decode()
            form = parse_qs(raw)
            # What a proxy echoes: the raw body, then the field re-encoded.
            echoed = encode(form["password"][0])
            text = f"ERR: 001, Authentication failed: {raw} / {echoed}"
            return web.Response(text=text)

        runner, url = await serve(echo, "/http/getbalance")
        events: list[GuardEvent] = []
        try:
            provider = Clickatell(USER, secret, API_ID, base_url=url)
            async with BalanceGuard(hooks=[events.append]) as guard:
                with (
                    caplog.at_level(logging.DEBUG, logger="guard"),
                    pytest.raises(ProviderAuthError) as info,
                ):
                    await guard.balance(provider)
        finally:
            await runner.cleanup()

        error = info.value
        shown = "\n".join(
            [
                str(error),
                repr(error),
                repr(pickle.loads(pickle.dumps(error))),  # noqa: S301
                str(pickle.dumps(error)),
                repr(events),
                caplog.text,
            ]
        )
        assert "[secure]" in str(error)
        assert [] == leaks(shown, secret, API_ID)

    @pytest.mark.parametrize("secret", SECRETS)
    @pytest.mark.parametrize("encoding", list(ENCODINGS))
    async def test_oneclickdz_key(
        self, session: aiohttp.ClientSession, secret: str, encoding: str
    ) -> None:
        """An echoed key, in a message or a code, is masked."""
        encode = ENCODINGS[encoding]

        async def echo(request: web.Request) -> web.Response:
            spelled = encode(request.headers["X-Access-Token"])
            return web.json_response(
                {
                    "success": False,
                    "error": {"code": f"BAD_{spelled}", "message": f"key {spelled}"},
                },
                status=418,
            )

        runner, url = await serve(echo, "/v3/account/balance")
        try:
            # A header value cannot hold every character: the key is sent
            # only where it can be.
            key = (
                secret.encode("latin-1", "replace").decode("latin-1").replace("?", "q")
            )
            provider = OneClickDZ(key, base_url=url)
            with pytest.raises(ProviderResponseError) as info:
                await provider.fetch_balance(session)
        finally:
            await runner.cleanup()

        assert [] == leaks(f"{info.value}\n{info.value!r}", key)


def rendered(error: BaseException) -> str:
    """
    The frames an error reporter capturing locals would ship, less this
    file's own (the test holds the secret it looks for).
    """
    frames = [
        (frame, line)
        for frame, line in traceback.walk_tb(error.__traceback__)
        if frame.f_code.co_filename != __file__
    ]
    stack = traceback.StackSummary.extract(iter(frames), capture_locals=True)
    return "".join(stack.format())


@pytest.fixture(name="emu")
def _emu(emu: Emulator) -> Emulator:
    """The shared emulator, with a OneClickDZ and a Clickatell account."""
    emu.add_oneclickdz(KEY, 1000)
    emu.add_clickatell(USER, PASSWORD, API_ID, credits=20)
    return emu


class _HookFailed(Exception):
    pass


async def _fail(*args: object) -> None:
    raise _HookFailed


class TestFrameLocals:
    """
    Error reporters capturing frame locals find no credential in guard's.
    """

    async def test_auth_error_oneclickdz(self, emu: Emulator) -> None:
        """A refused key, raised through the guard, shows in no frame."""
        wrong = "sk_live_wrong_0a1b2c3d"
        provider = emu.oneclickdz(wrong)
        async with BalanceGuard(retries=0) as guard:
            with pytest.raises(ProviderAuthError) as info:
                await guard.balance(provider)

        text = rendered(info.value)
        assert "fetch_balance" in text  # the provider's frames are there
        assert [] == leaks(text, wrong)

    async def test_auth_error_clickatell(
        self, emu: Emulator, session: aiohttp.ClientSession
    ) -> None:
        """A refused password and api_id show in no frame."""
        wrong = "pw-wrong-7e6d5c"
        provider = emu.clickatell(USER, wrong, API_ID)
        with pytest.raises(ProviderAuthError) as info:
            await provider.fetch_balance(session)

        text = rendered(info.value)
        assert "fetch_balance" in text
        assert [] == leaks(text, wrong, API_ID)

    @pytest.mark.parametrize("signal", ["on_request_start", "on_request_end"])
    @pytest.mark.parametrize("which", ["oneclickdz", "clickatell"])
    async def test_hook_inside_a_fetch(
        self, emu: Emulator, signal: str, which: str
    ) -> None:
        """A user's request hook failing mid-fetch shows no credential, even
        in aiohttp's frames."""
        trace = aiohttp.TraceConfig()
        getattr(trace, signal).append(_fail)
        provider = (
            emu.oneclickdz(KEY)
            if which == "oneclickdz"
            else emu.clickatell(USER, PASSWORD, API_ID)
        )
        async with aiohttp.ClientSession(trace_configs=[trace]) as session:
            with pytest.raises(_HookFailed) as info:
                await provider.fetch_balance(session)

        text = rendered(info.value)
        assert "fetch_balance" in text
        assert "_request" in text  # aiohttp's own frames are there too
        assert [] == leaks(text, KEY, PASSWORD, API_ID)
