"""A WebSocket client of a udpgate ws listener, as an AWS API Gateway
client would be: it sends the base64 of an RPC Call in a text message,
and decodes the base64 of the Reply that comes back.

Usage: ws_client.py URL PBDIR, where PBDIR holds the Python classes that
protoc --python_out generated from schemas/proto. Prints the Reply's id and
status, then one line per place: name, latitude, longitude, tab-separated.
"""

import asyncio
import base64
import sys

import websockets

sys.path.insert(0, sys.argv[2])

from udpgate.places.v1 import places_pb2  # noqa: E402
from udpgate.rpc.v1 import envelope_pb2  # noqa: E402


async def main(url):
    call = envelope_pb2.Call(
        id=42,
        service="InterestingPlaces",
        method="GetRandom",
        params=places_pb2.GetRandomRequest(limit=4).SerializeToString(),
    )
    async with websockets.connect(url) as ws:
        await ws.send(base64.b64encode(call.SerializeToString()).decode("ascii"))
        msg = await asyncio.wait_for(ws.recv(), 10)
    if not isinstance(msg, str):
        sys.exit("the reply to a text message is not a text message")
    reply = envelope_pb2.Reply.FromString(base64.b64decode(msg, validate=True))
    print("reply", reply.id, envelope_pb2.Status.Name(reply.status), reply.error)
    for p in places_pb2.GetRandomResponse.FromString(reply.body).places:
        print(p.name, p.location.latitude, p.location.longitude, sep="\t")


asyncio.run(main(sys.argv[1]))
