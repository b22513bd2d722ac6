"""How fast a long history opens and pages in Chromium. Prints figures.

Fills a scratch SQLite database with one person's 5,000 conversations and, newest of them, one of
1,000 messages (bulk inserts: tests/histories.py), runs the site in daphne, and opens the
conversation in Debian's Chromium as that person. Then:

- the first screen, on each of --runs fresh loads: from navigation start to the response's first
  byte, to DOMContentLoaded, to the newest message visible (rendered, in the thread's view), to the
  load event, and the Largest Contentful Paint;
- scrolling up: for each of --pages earlier pages, the time from scrolling the thread to its top to
  the earlier messages being on the page, and the request's own time (Resource Timing);
- the sidebar: the first screen of the index page, and for each of --pages pages, the time from
  scrolling the list to its end to the next conversations being in it, and the request's time.

    .venv/bin/python bench/long_histories.py [--messages 1000] [--conversations 5000] [--runs 5] [--pages 10]

`--pages 0` times the first screen alone, as it can be on a site that renders the whole branch.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.fake_vllm import FakeVLLM  # noqa: E402
from tests.site_server import SiteProcess  # noqa: E402

PASSWORD = "bench-password-123"

# Before the page's own scripts: when the newest message is first both rendered and in the
# thread's view (checked each frame), and the Largest Contentful Paint.
RECORD_THE_FIRST_SCREEN = """
window.firstScreen = {};
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.firstScreen.lcp = entry.startTime;
}).observe({ type: "largest-contentful-paint", buffered: true });
const newestShown = () => {
  const thread = document.getElementById("thread");
  const newest = thread && thread.querySelector("article:last-of-type");
  if (newest && (newest.classList.contains("user") || newest.querySelector(".body.markdown"))) {
    const box = newest.getBoundingClientRect(), view = thread.getBoundingClientRect();
    if (box.bottom > view.top && box.top < view.bottom) {
      window.firstScreen.newestVisible = performance.now();
      return;
    }
  }
  requestAnimationFrame(newestShown);
};
requestAnimationFrame(newestShown);
"""

# Scroll a list to one end and time until it holds more of `what`; resolves with milliseconds.
SCROLL_AND_TIME = """async ([list, what, toTop]) => {
  const box = document.querySelector(list);
  const before = box.querySelectorAll(what).length;
  const started = performance.now();
  box.scrollTop = toTop ? 0 : box.scrollHeight;
  await new Promise((done) => {
    const check = () => (box.querySelectorAll(what).length > before ? done() : requestAnimationFrame(check));
    check();
  });
  return performance.now() - started;
}"""


def request_times(page: Page, part: str) -> list[float]:
    """Each request's time (ms) whose address has `part`, from the page's Resource Timing."""
    return page.evaluate(
        "(part) => performance.getEntriesByType('resource').filter(e => e.name.includes(part)).map(e => e.duration)",
        part,
    )


def figures(label: str, values: list[float]) -> None:
    print(f"  {label:44} median {statistics.median(values):7.1f} ms   max {max(values):7.1f} ms   ({len(values)} runs)")


def fill(database_url: str, messages: int, conversations: int) -> int:
    """Fills the database in this process (bulk inserts); the conversation's id."""
    os.environ.update({"DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "chatsite.settings"})
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from tests.histories import long_conversation, many_conversations

    call_command("migrate", verbosity=0)
    owner = User.objects.create_user("bench", password=PASSWORD)
    started = time.perf_counter()
    many_conversations(owner, conversations)
    conversation = long_conversation(owner, messages)  # the newest: first in the sidebar
    took = time.perf_counter() - started
    print(f"Filled {conversations:,} conversations and one of {messages:,} messages in {took:.1f} s")
    return conversation.pk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--conversations", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pages", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch, FakeVLLM() as fake:
        database_url = f"sqlite:///{scratch}/bench.sqlite3"
        os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-secret")
        pk = fill(database_url, args.messages, args.conversations)
        env = {"DATABASE_URL": database_url, "VLLM_BASE_URL": fake.base_url}
        site = SiteProcess(env).start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                context = browser.new_context(base_url=site.url, viewport={"width": 1280, "height": 800})
                page = context.new_page()
                page.goto("/accounts/login/")
                page.get_by_label("Username").fill("bench")
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_load_state("load")
                page.add_init_script(RECORD_THE_FIRST_SCREEN)

                print(f"Opening the conversation of {args.messages:,} messages (Chromium, 1280x800):")
                first_screens = []
                for _ in range(args.runs):
                    page.goto(f"/c/{pk}/")
                    page.wait_for_function("() => window.firstScreen.newestVisible && window.firstScreen.lcp")
                    first_screens.append(
                        page.evaluate(
                            """() => {
                              const nav = performance.getEntriesByType("navigation")[0];
                              return {ttfb: nav.responseStart, dom: nav.domContentLoadedEventEnd,
                                      load: nav.loadEventEnd, size: nav.transferSize, ...window.firstScreen};
                            }"""
                        )
                    )
                figures("first byte of the page", [r["ttfb"] for r in first_screens])
                figures("DOMContentLoaded", [r["dom"] for r in first_screens])
                figures("newest message visible (rendered)", [r["newestVisible"] for r in first_screens])
                figures("load event", [r["load"] for r in first_screens])
                figures("Largest Contentful Paint", [r["lcp"] for r in first_screens])
                articles = page.locator("#thread article").count()
                print(f"  the page: {first_screens[-1]['size'] / 1024:.0f} KiB on the wire, {articles} messages in it")

                if not args.pages:  # the first screen alone (as of a site that does not page)
                    browser.close()
                    return
                print("Scrolling up to earlier messages:")
                scrolled = [page.evaluate(SCROLL_AND_TIME, ["#thread", "article", True]) for _ in range(args.pages)]
                figures("scrolled to the top → earlier page on it", scrolled)
                figures("GET …/older (the request alone)", request_times(page, "/older?"))

                print(f"The sidebar of {args.conversations + 1:,} conversations:")
                index_screens = []
                for _ in range(args.runs):
                    page.goto("/")
                    page.wait_for_load_state("load")
                    index_screens.append(
                        page.evaluate(
                            """() => { const nav = performance.getEntriesByType("navigation")[0];
                                       return [nav.responseStart, nav.loadEventEnd]; }"""
                        )
                    )
                figures("index page: first byte", [r[0] for r in index_screens])
                figures("index page: load event", [r[1] for r in index_screens])
                listed = [
                    page.evaluate(SCROLL_AND_TIME, ["#conversations", "li:not(.more)", False])
                    for _ in range(args.pages)
                ]
                figures("scrolled to the end → next page in the list", listed)
                figures("GET /c/list (the request alone)", request_times(page, "/c/list?"))
                shown = page.locator("#conversations li:not(.more)").count()
                print(f"  {shown} conversations listed after {args.pages} pages")
                browser.close()
        finally:
            site.stop()


if __name__ == "__main__":
    main()
