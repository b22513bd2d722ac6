"""How fast search answers in a large history. Prints p50/p99 latencies.

Fills a scratch database with 10,000 conversations and 200,000 messages (20 per conversation,
English and Korean text) for one person, plus a tenth as many for a second person whose messages
use the same words (search must skip them), then times `chat.search.search`, the function behind the page's search
box and `GET /api/search`, for several kinds of query. The target is under 50 ms p50.

    .venv/bin/python bench/search.py [--conversations 10000] [--messages-per 20] [--runs 30]
    .venv/bin/python bench/search.py --postgresql    # on a PostgreSQL server started for the run
    .venv/bin/python bench/search.py --database-url postgres://user@host/db   # an empty database

Given a database it has filled before (--database-url), it measures again without filling.
"""

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # at run time, imported once django.setup() has run
    from django.contrib.auth.models import User

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import scratch_database  # noqa: E402

ENGLISH = (
    "model server answer question python database index memory latency token stream browser search "
    "history travel recipe garden budget network kernel compile function variable result error "
    "performance summary meeting project design review language translate weather music library"
).split()
KOREAN = (
    "데이터베이스 서버 모델 질문 답변 검색 기록 여행을 요리법 정원 예산 네트워크 커널 함수 변수 결과 오류 "
    "성능 요약 회의 프로젝트 설계 검토 언어 번역 날씨 음악 도서관 세계를 한국어 문장 시간이 필요합니다"
).split()

QUERIES = {
    "English word, common": "model",
    "English word, rare": "zephyrine",
    "English phrase": '"stream browser"',
    "Korean word (trigram)": "데이터베이스",
    "Korean part of a word": "베이스",
    "Korean, 2 characters": "세계",
    "two words, mixed scripts": "python 서버",
    "no match": "qqqxxyz",
}


def sentence(rng: random.Random) -> str:
    words = [rng.choice(KOREAN if rng.random() < 0.4 else ENGLISH) for _ in range(rng.randint(8, 40))]
    return " ".join(words).capitalize() + "."


def fill(owner: "User", conversations: int, per: int, rng: random.Random) -> None:
    from django.db import transaction

    from chat.models import Conversation, Message

    batch = 500
    for first in range(0, conversations, batch):
        with transaction.atomic():
            chats = Conversation.objects.bulk_create(
                Conversation(owner=owner, title=" ".join(sentence(rng).split()[:5]))
                for i in range(first, min(first + batch, conversations))
            )
            messages = []
            for chat in chats:
                for n in range(per):
                    text = sentence(rng) + " " + sentence(rng)
                    if rng.random() < 0.0005:
                        text += " zephyrine"
                    role = Message.Role.USER if n % 2 == 0 else Message.Role.ASSISTANT
                    messages.append(Message(conversation=chat, role=role, content=text))
            Message.objects.bulk_create(messages, batch_size=1000)
        done = min(first + batch, conversations)
        print(f"\r  {owner.username}: {done:,} conversations, {done * per:,} messages", end="", flush=True)
    print()


def measure(owner: "User", runs: int) -> None:
    """Wall-clock time, as a person waits for it, and the CPU time this process spent, which a
    machine busy with other work does not inflate (the database works in-process with SQLite)."""
    from chat.search import search

    every_wall: list[float] = []
    every_cpu: list[float] = []
    print(f"{'query':32} {'p50 ms':>8} {'p99 ms':>8} {'CPU p50':>8} {'results':>8}")
    for label, text in QUERIES.items():
        wall, cpu = [], []
        for _ in range(runs):
            started, started_cpu = time.perf_counter(), time.process_time()
            results = search(owner, text)
            wall.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)
        every_wall += wall
        every_cpu += cpu
        found = len(results.messages) + len(results.conversations)
        print(
            f"{label:32} {statistics.median(wall):8.1f} {percentile(wall, 99):8.1f} "
            f"{statistics.median(cpu):8.1f} {found:8}"
        )
    print(
        f"{'all queries':32} {statistics.median(every_wall):8.1f} {percentile(every_wall, 99):8.1f} "
        f"{statistics.median(every_cpu):8.1f}"
    )


def percentile(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--messages-per", type=int, default=20)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--database-url", help="an empty database to fill (default: a scratch SQLite file)")
    scratch_database.add_postgresql_option(parser)
    args = parser.parse_args()
    scratch_database.run_on_database(parser, args, run, args.database_url)


def run(args: argparse.Namespace, database_url: str | None) -> None:
    scratch = scratch_database.set_up_django(database_url)
    from django.contrib.auth.models import User
    from django.db import connection

    owner = User.objects.filter(username="bench").first()
    if owner is not None:
        print(f"Reusing the history already in {connection.vendor}: {owner.conversations.count():,} conversations.")
    else:
        owner = User.objects.create_user("bench")
        other = User.objects.create_user("someone-else")
        total = args.conversations * args.messages_per
        print(f"Filling {connection.vendor}: {args.conversations:,} conversations, {total:,} messages, a tenth more…")
        started = time.perf_counter()
        rng = random.Random(12)
        fill(owner, args.conversations, args.messages_per, rng)
        # Someone else's history, written after the person's: newest first, search must skip it.
        fill(other, args.conversations // 10, args.messages_per, rng)
        print(f"  filled and indexed in {time.perf_counter() - started:.0f} s")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    print(f"Searching as one person ({args.runs} runs of each query, at most 20 results of each kind):")
    measure(owner, args.runs)
    scratch.cleanup()


if __name__ == "__main__":
    main()
