"""Callback wiring: turns authenticated guest reports into slot updates and `vm.guest` / `vm.metrics` events."""

from __future__ import annotations

from libs.common import subjects as s
from libs.common.bus import ConsumerSpec
from libs.common.messages import GuestReport
from libs.common.runner import ServiceContext
from services.callback.handlers.guest_report import GuestReportHandler
from services.callback.settings import Settings


async def setup(ctx: ServiceContext) -> None:
    settings: Settings = ctx.settings
    handler = GuestReportHandler(ctx.store, ctx.bus)
    await ctx.bus.consume(ConsumerSpec("callback-guest-report", s.GUEST_REPORT, GuestReport,
                                       concurrency=settings.concurrency), handler)
