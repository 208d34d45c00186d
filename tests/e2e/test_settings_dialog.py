"""The settings dialog as a participant uses it: a keybinding she changes there is hers after a reload."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from devkit.doubles.comfyui_nodes import catalogue
from tests.support.browser import logged_in_page
from tests.support.queue_manager_app import LiveServer, register_worker

pytestmark = [pytest.mark.browser, pytest.mark.slow]

COMMAND = "New Blank Workflow"


async def open_keybindings(page: Page) -> None:
    await page.evaluate("() => window.app.extensionManager.command.execute('Comfy.ShowSettingsDialog')")
    await page.locator(".settings-container, .p-dialog").get_by_text("Keybinding", exact=True).first.click()
    await page.locator(".keybinding-panel").wait_for(timeout=30_000)
    await page.locator(".keybinding-panel input").first.fill(COMMAND)


async def test_a_keybinding_changed_in_the_settings_dialog_is_kept_over_a_reload(
    browser: Browser, server: LiveServer
) -> None:
    with httpx.Client(base_url=server.url) as worker:
        register_worker(worker, catalogue([]))
    context, page = await logged_in_page(browser, server, "alice")
    await open_keybindings(page)
    await page.locator(".keybinding-panel tr", has_text=COMMAND).first.dblclick()
    # The edit dialog's own input: the settings dialog around it has inputs too, and one of those
    # taking the keys (the edit dialog not yet open on a loaded machine) would save nothing.
    combo = page.get_by_placeholder("Press keys for new binding")
    await combo.wait_for(timeout=30_000)
    await combo.press("Alt+Shift+KeyK")
    await expect(combo).to_have_value(re.compile("Shift"), timeout=30_000)
    await page.get_by_role("button", name="Save", exact=True).click()
    row = page.locator(".keybinding-panel tr", has_text=COMMAND).first
    await row.get_by_text("Shift", exact=True).wait_for(timeout=30_000)
    await page.reload()
    await page.wait_for_function("() => window.app && window.app.graph", timeout=30_000)
    await open_keybindings(page)
    row = page.locator(".keybinding-panel tr", has_text=COMMAND).first
    await row.get_by_text("Shift", exact=True).wait_for(timeout=30_000)
    stored = await page.request.get(f"{server.url}/w/alice/api/settings/Comfy.Keybinding.NewBindings")
    assert any(b["commandId"] == "Comfy.NewBlankWorkflow" for b in await stored.json())
    await context.close()
