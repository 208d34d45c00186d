"""Bringing an image into a workspace as on ComfyUI: the Load Image node's upload button, a file
dropped on the node, a pasted image, and the mask editor's save; each job then runs on that file."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from playwright.async_api import Browser, FileChooser, FilePayload, Page, Response

from tests.support.browser import SocketLog, browser_server, until, working_workspace
from tests.support.queue_manager_app import LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LOAD_AND_SAVE: dict[str, Any] = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "none.png"}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loaded"}},
}

# Where a node's widget is on the screen: the page's coordinates of its middle, once the canvas drew it.
WIDGET_AT = """([type, name]) => {
    const node = window.app.graph.nodes.find(n => n.type === type);
    const widget = node?.widgets.find(w => w.name === name);
    if (widget?.last_y === undefined) return null;
    const y = node.pos[1] + widget.last_y + 10;
    const [x, top] = window.app.canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0] / 2, y]);
    const rect = window.app.canvas.canvas.getBoundingClientRect();
    return [rect.left + x, rect.top + top];
}"""
# Whether the canvas has handled the pointer's move to (x, y): it finds what is under it as it moves.
POINTER_SEEN = """([x, y]) => {
    const rect = window.app.canvas.canvas.getBoundingClientRect();
    const [gx, gy] = window.app.canvas.ds.convertCanvasToOffset([x - rect.left, y - rect.top]);
    const [mx, my] = window.app.canvas.graph_mouse;
    return Math.abs(mx - gx) < 1 && Math.abs(my - gy) < 1;
}"""
IMAGE_VALUE = "() => window.app.graph.nodes.find(n => n.type === 'LoadImage').widgets[0].value"


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


async def widget_at(page: Page, node_type: str, widget: str) -> tuple[float, float]:
    """The pointer on a node's widget, once the canvas has drawn it and seen the pointer there."""
    handle = await page.wait_for_function(WIDGET_AT, arg=[node_type, widget], timeout=30_000)
    x, y = await handle.json_value()
    await page.mouse.move(x, y)
    await page.wait_for_function(POINTER_SEEN, arg=[x, y], timeout=30_000)
    return x, y


async def choose_file(page: Page, name: str, data: bytes) -> None:
    """Click the Load Image node's upload button and pick a file as from the desktop. The page
    catches file choosers before the click: Chromium opens the dialog (not caught) when the catching
    reaches it only after the click."""
    chosen: asyncio.Future[FileChooser] = asyncio.get_running_loop().create_future()
    page.once("filechooser", lambda found: chosen.set_result(found))
    x, y = await widget_at(page, "LoadImage", "upload")
    await page.mouse.click(x, y)
    async with asyncio.timeout(10):
        await (await chosen).set_files(FilePayload(name=name, mimeType="image/png", buffer=data))


async def run(page: Page, log: SocketLog) -> dict[str, Any]:
    """Press Run and wait for the job's end: its ``execution_success`` or ``execution_error``."""
    ended = len(log.of_type("execution_success")) + len(log.of_type("execution_error"))
    await page.locator("button:has-text('Run')").first.click()
    await until(
        page,
        lambda: len(log.of_type("execution_success")) + len(log.of_type("execution_error")) > ended,
        "the job's end",
    )
    return [m for m in log.messages if m["type"] in ("execution_success", "execution_error")][-1]


async def test_an_image_chosen_with_the_upload_button_is_the_one_the_job_loads(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    async with working_workspace(browser, server, tmp_path) as (_, _, page, log):
        await page.evaluate("graph => window.app.loadApiJson(graph, 'upload')", LOAD_AND_SAVE)
        await choose_file(page, "chosen cat.png", png(40, 30, (200, 10, 10)))
        await page.wait_for_function(f"() => ({IMAGE_VALUE})() === 'chosen cat.png'", timeout=30_000)
        ended = await run(page, log[0])
        assert ended["type"] == "execution_success", ended
        assert (tmp_path / "files/users/alice/input/chosen cat.png").read_bytes() == png(
            40, 30, (200, 10, 10)
        )


# A file from the desktop dropped at a point of the page, or pasted (Ctrl+V) into it.
DROP_AT = """async ([x, y, name, bytes]) => {
    const data = new DataTransfer();
    data.items.add(new File([new Uint8Array(bytes)], name, { type: "image/png" }));
    const target = document.elementFromPoint(x, y);
    for (const kind of ["dragenter", "dragover", "drop"]) {
        target.dispatchEvent(new DragEvent(kind, {
            dataTransfer: data, bubbles: true, cancelable: true, clientX: x, clientY: y,
        }));
    }
}"""
PASTE = """([name, bytes]) => {
    const data = new DataTransfer();
    data.items.add(new File([new Uint8Array(bytes)], name, { type: "image/png" }));
    const canvas = document.querySelector("#graph-canvas");  // where the keyboard is after a click on it
    canvas.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true }));
}"""


async def test_an_image_dropped_on_the_load_image_node_is_the_one_the_job_loads(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    async with working_workspace(browser, server, tmp_path) as (_, _, page, log):
        await page.evaluate("graph => window.app.loadApiJson(graph, 'drop')", LOAD_AND_SAVE)
        x, y = await widget_at(page, "LoadImage", "image")
        picture = png(24, 16, (10, 200, 10))
        await page.evaluate(DROP_AT, [x, y, "dropped.png", list(picture)])
        await page.wait_for_function(f"() => ({IMAGE_VALUE})() === 'dropped.png'", timeout=30_000)
        ended = await run(page, log[0])
        assert ended["type"] == "execution_success", ended
        assert (tmp_path / "files/users/alice/input/dropped.png").read_bytes() == picture


async def test_an_image_pasted_on_the_selected_load_image_node_is_the_one_the_job_loads(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    """As ComfyUI's frontend: a pasted screenshot (named 'image.png') goes to the 'pasted' folder."""
    async with working_workspace(browser, server, tmp_path) as (_, _, page, log):
        await page.evaluate("graph => window.app.loadApiJson(graph, 'paste')", LOAD_AND_SAVE)
        x, y = await widget_at(page, "LoadImage", "image")
        await page.mouse.click(x - 100, y - 60)  # the node's body: it is selected
        picture = png(20, 12, (10, 10, 200))
        await page.evaluate(PASTE, ["image.png", list(picture)])
        await page.wait_for_function(f"() => ({IMAGE_VALUE})().startsWith('pasted/image')", timeout=30_000)
        name = await page.evaluate(IMAGE_VALUE)
        ended = await run(page, log[0])
        assert ended["type"] == "execution_success", ended
        assert (tmp_path / "files/users/alice/input" / name).read_bytes() == picture


MASKED = "clipspace/clipspace-painted-masked-"


async def face_in_load_image(page: Page) -> tuple[float, float]:
    """A Load Image node showing a 64x48 picture chosen with its button; where its title is."""
    await page.evaluate("graph => window.app.loadApiJson(graph, 'mask')", LOAD_AND_SAVE)
    await choose_file(page, "face.png", png(64, 48, (120, 60, 30)))
    x, y = await widget_at(page, "LoadImage", "upload")
    await page.wait_for_function(
        "() => window.app.graph.nodes.find(n => n.type === 'LoadImage').imgs?.[0]?.complete",
        timeout=30_000,
    )
    return x - 100, y - 80


async def draw_mask(page: Page, x: float, y: float, shift: float) -> None:
    """Open the mask editor on the Load Image node whose title is at (x, y), draw a stroke ``shift``
    pixels right of the middle and press Save."""
    await page.mouse.click(x, y)  # the node's title: it is selected
    await page.evaluate(
        "() => window.app.extensionManager.command.execute('Comfy.MaskEditor.OpenMaskEditor')"
    )
    await page.locator("#maskEditor").get_by_text("64x48").wait_for(timeout=30_000)  # the image is in
    box = await page.locator("#maskEditor canvas").first.bounding_box()
    assert box is not None
    middle_x, middle_y = box["x"] + box["width"] / 2 + shift, box["y"] + box["height"] / 2
    await page.mouse.move(middle_x - 100, middle_y)
    await page.mouse.down()
    for step in range(1, 11):
        await page.mouse.move(middle_x - 100 + 20 * step, middle_y + 5 * step)
    await page.mouse.up()
    await page.locator("#maskEditor").get_by_role("button", name="Save").click()


async def paint_mask(page: Page, x: float, y: float, shift: float) -> str:
    """``draw_mask``, then the node's new image name once the editor saved and closed."""
    before = await page.evaluate(IMAGE_VALUE)
    await draw_mask(page, x, y, shift)
    await page.wait_for_function(
        f"before => ({IMAGE_VALUE})() !== before && ({IMAGE_VALUE})().startsWith('{MASKED}')",
        arg=before,
        timeout=30_000,
    )
    await page.locator("#maskEditor").wait_for(state="detached", timeout=30_000)
    return str(await page.evaluate(IMAGE_VALUE)).removesuffix(" [input]")


async def test_a_mask_drawn_in_the_mask_editor_is_saved_and_the_job_loads_the_masked_image(
    browser: Browser, server: LiveServer, tmp_path: Path, artifacts_dir: Path
) -> None:
    answered: list[str] = []

    def heard(response: Response) -> None:
        if "/upload/" in response.url:
            answered.append(f"{response.status} {response.url}")

    def watch(page: Page) -> None:
        page.on("response", heard)

    async with working_workspace(browser, server, tmp_path, watch) as (_, _, page, log):
        x, y = await face_in_load_image(page)
        name = await paint_mask(page, x, y, 0)
        await page.screenshot(path=artifacts_dir / "mask-saved.png")
        assert [line for line in answered if not line.startswith("200 ")] == []
        with Image.open(tmp_path / "files/users/alice/input" / name) as masked:
            alpha = masked.getchannel("A")
            assert masked.size == (64, 48) and alpha.getextrema() == (0, 255), "no mask in the saved image"
            corner = masked.getpixel((0, 0))  # the brush stroke stayed in the middle
            assert corner == (120, 60, 30, 255), "the saved image lost its colours"
        ended = await run(page, log[0])
        assert ended["type"] == "execution_success", ended
        history = await page.request.get(f"{server.url}/w/alice/api/history/{ended['data']['prompt_id']}")
        ran = (await history.json())[ended["data"]["prompt_id"]]["prompt"][2]["1"]["inputs"]["image"]
        assert ran == f"{name} [input]", "the job did not load the masked image"


async def test_a_masked_image_opens_again_in_the_mask_editor_with_its_mask(
    browser: Browser, server: LiveServer, tmp_path: Path, artifacts_dir: Path
) -> None:
    """The editor opens a just-masked image from the layers its save stored in 'clipspace/' (the
    mask, the paint, the painted image): every one of them must be there, as on ComfyUI."""
    answered: list[str] = []

    def watch(page: Page) -> None:
        page.on("response", lambda r: answered.append(f"{r.status} {r.url}"))

    async with working_workspace(browser, server, tmp_path, watch) as (_, _, page, log):
        x, y = await face_in_load_image(page)
        first = await paint_mask(page, x, y, 0)
        second = await paint_mask(page, x, y, 150)
        await page.screenshot(path=artifacts_dir / "mask-again.png")
        assert [line for line in answered if line[0] in "45" and "none.png" not in line] == []
        folder = tmp_path / "files/users/alice/input"
        with Image.open(folder / first) as once, Image.open(folder / second) as twice:
            assert twice.getpixel((0, 0)) == (120, 60, 30, 255), "the image lost its colours"
            masked_once = {i for i, a in enumerate(once.getchannel("A").getdata()) if a < 255}
            masked_twice = {i for i, a in enumerate(twice.getchannel("A").getdata()) if a < 255}
        assert masked_once, "no mask in the first save"
        assert masked_once <= masked_twice, "the editor opened without the first mask, and its save lost it"
        assert masked_twice > masked_once, "the second stroke is not in the second save"
        ended = await run(page, log[0])
        assert ended["type"] == "execution_success", ended


@pytest.fixture
def small_quota_server(redis_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    """The browser tests' server with 64 KiB for each participant's files."""
    with browser_server(redis_url, tmp_path / "files", max_user_files_bytes=QUOTA) as running:
        yield running


QUOTA = 64 * 1024


async def test_a_mask_her_full_folder_cannot_take_is_refused_once_with_the_reason_not_sent_again_and_again(
    browser: Browser, small_quota_server: LiveServer, tmp_path: Path
) -> None:
    """The stock editor sends each layer of a save until the server takes it (it counts only lost
    connections): a refusal must end the save, tell her why, and not have her page re-send it."""
    sent: list[str] = []

    def watch(page: Page) -> None:
        page.on("request", lambda r: sent.append(r.url) if "/upload/mask" in r.url else None)

    async with working_workspace(browser, small_quota_server, tmp_path, watch) as (_, _, page, _):
        x, y = await face_in_load_image(page)
        folder = tmp_path / "files/users/alice"
        used = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        (folder / "output").mkdir(exist_ok=True)
        (folder / "output/earlier.bin").write_bytes(bytes(QUOTA - used - 16))  # her folder is full
        await draw_mask(page, x, y, 0)
        editor, told = page.locator("#maskEditor"), page.get_by_text("your files take")
        seen = False  # the message is looked for all along: it may go before the editor closes
        for _ in range(1200):  # bounded: the editor closes, or the page keeps re-sending
            seen = seen or await told.count() > 0
            if len(sent) > 12 or not await editor.count():
                break
            await page.wait_for_timeout(50)
        assert len(sent) <= 6, f"the page sent the refused mask {len(sent)} times"
        if not seen:
            await told.first.wait_for(timeout=30_000)
        assert not (folder / "input/clipspace").exists(), "a layer was stored past her quota"
