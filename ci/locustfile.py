"""Locust load for POST /input, in both shapes the reference design's clients
send: `Tweeter` users post one tweet object at a time, and one
`SpanishArrayTweeter` posts arrays of 10,000 tweets with the Spanish field
names (`descripcion`, `Pais`, `Clima`; README lists the aliases). clima's own `clima load` is the
faster, coordinated-omission-free generator; this file keeps Locust's web UI
and CSV reports available for those who know it.

    locust -f ci/locustfile.py --host http://127.0.0.1:8080                 # web UI on :8089
    locust -f ci/locustfile.py --host http://127.0.0.1:8080 --headless \\
        --users 50 --spawn-rate 10 --run-time 1m --csv .clima/locust/run     # CSV out
"""

import random
import uuid
from pathlib import Path

from locust import FastHttpUser, constant, task

# The same sample as `clima load` (rust/clima-tweet/src/sample.txt).
SAMPLE = Path(__file__).resolve().parent.parent / "rust/clima-tweet/src/sample.txt"
_LINES = [line.split("\t", 1) for line in SAMPLE.read_text().splitlines() if line and not line.startswith("#")]
_TABLE = {key: values.split("|") for key, values in _LINES}
COUNTRIES = _TABLE.pop("countries")
WEATHERS = _TABLE


def random_tweet():
    weather = random.choice(list(WEATHERS))
    return random.choice(WEATHERS[weather]), random.choice(COUNTRIES), weather


def post(user, body, name):
    # An Idempotency-Key makes the request safe to retry (see README).
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    with user.client.post("/input", json=body, headers=headers, name=name, catch_response=True) as response:
        if response.status_code != 202:
            response.failure(f"{response.status_code}: {response.text[:500]}")


class Tweeter(FastHttpUser):
    wait_time = constant(0)

    @task
    def post_tweet(self):
        description, country, weather = random_tweet()
        post(self, {"description": description, "country": country, "weather": weather}, "/input")


class SpanishArrayTweeter(FastHttpUser):
    # One such user, an array a second: 10,000 tweets/s on top of the single objects.
    fixed_count = 1
    wait_time = constant(1)
    ARRAY_LENGTH = 10_000

    @task
    def post_array(self):
        tweets = [dict(zip(("descripcion", "Pais", "Clima"), random_tweet())) for _ in range(self.ARRAY_LENGTH)]
        post(self, tweets, "/input [array of 10,000, Spanish keys]")
