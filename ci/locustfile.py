"""Locust load for POST /input, as the reference design drove it: each user
posts one random weather tweet at a time. clima's own `clima load` is the
faster, coordinated-omission-free generator; this file keeps Locust's web UI
and CSV reports available for those who know it.

    locust -f ci/locustfile.py --host http://127.0.0.1:8080                 # web UI on :8089
    locust -f ci/locustfile.py --host http://127.0.0.1:8080 --headless \\
        --users 50 --spawn-rate 10 --run-time 1m --csv .clima/locust/run     # CSV out
"""

import random
import uuid

from locust import FastHttpUser, constant, task

COUNTRIES = ["GT", "MX", "US", "CA", "BR", "AR", "CO", "PE", "CL", "ES", "SV", "HN"]
WEATHERS = {
    "Lluvioso": ["Está lloviendo", "Llueve a cántaros", "Lluvia ligera por la tarde"],
    "Nublado": ["Está nublado", "Cielo gris todo el día", "Nubes densas, sin sol"],
    "Soleado": ["Hace sol", "Día despejado y caluroso", "Sol radiante en la ciudad"],
}


class Tweeter(FastHttpUser):
    wait_time = constant(0)

    @task
    def post_tweet(self):
        weather = random.choice(list(WEATHERS))
        tweet = {"description": random.choice(WEATHERS[weather]), "country": random.choice(COUNTRIES),
                 "weather": weather}
        # An Idempotency-Key makes the request safe to retry (see README).
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        with self.client.post("/input", json=tweet, headers=headers, catch_response=True) as response:
            if response.status_code != 202:
                response.failure(f"{response.status_code}: {response.text}")
