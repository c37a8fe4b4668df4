// The official JS SDK (@azure/service-bus, on rhea) against the sbsync emulator.
//
//   SB_CONNECTION_STRING=... node conformance.js SCENARIO ENTITY
//
// Runs one scenario and prints what it observed as one JSON line on stdout; the Python test
// (tests/emulator/test_js.py) asserts on it. Any failure exits non-zero with the error on
// stderr. Retries are off and the operation timeout short, so a broken emulator fails fast
// instead of hanging in the SDK's retry loop.
"use strict";

const { ServiceBusClient } = require("@azure/service-bus");

const WAIT_MS = 5000;

async function receiveAll(receiver, count) {
  const got = [];
  const deadline = Date.now() + WAIT_MS;
  while (got.length < count && Date.now() < deadline) {
    const batch = await receiver.receiveMessages(count - got.length, { maxWaitTimeInMs: 1000 });
    got.push(...batch);
  }
  return got;
}

function byBody(messages) {
  return Object.fromEntries(messages.map((m) => [m.body, m]));
}

async function errorOf(promise) {
  try {
    await promise;
  } catch (err) {
    return { name: err.name, code: err.code, message: err.message };
  }
  return null;
}

const scenarios = {
  // complete, abandon, defer, dead-letter; lock renewal; the dead-letter queue
  async settlement(client, queue) {
    const sender = client.createSender(queue);
    await sender.sendMessages(["m0", "m1", "m2", "m3"].map((body) => ({ body })));
    const receiver = client.createReceiver(queue);
    const got = byBody(await receiveAll(receiver, 4));
    const renewed = await receiver.renewMessageLock(got.m0);
    await receiver.completeMessage(got.m0);
    await receiver.abandonMessage(got.m1);
    await receiver.deferMessage(got.m2);
    await receiver.deadLetterMessage(got.m3, {
      deadLetterReason: "bad",
      deadLetterErrorDescription: "very bad",
    });
    const [again] = await receiveAll(receiver, 1);
    await receiver.completeMessage(again);
    const [deferred] = await receiver.receiveDeferredMessages([got.m2.sequenceNumber]);
    await receiver.completeMessage(deferred);
    const dlq = client.createReceiver(queue, { subQueueType: "deadLetter" });
    const [dead] = await receiveAll(dlq, 1);
    await dlq.completeMessage(dead);
    return {
      received: Object.keys(got).sort(),
      renewedInFuture: renewed.getTime() > Date.now(),
      again: { body: again.body, deliveryCount: again.deliveryCount },
      deferred: deferred.body,
      dead: {
        body: dead.body,
        reason: dead.deadLetterReason,
        description: dead.deadLetterErrorDescription,
      },
    };
  },

  // schedule (future and now), cancel, peek, receive what is due
  async schedule(client, queue) {
    const sender = client.createSender(queue);
    const later = await sender.scheduleMessages(
      [{ body: "later" }, { body: "cancelled" }],
      new Date(Date.now() + 3600 * 1000),
    );
    await sender.scheduleMessages({ body: "now" }, new Date());
    await sender.cancelScheduledMessages(later[1]);
    const receiver = client.createReceiver(queue);
    const peeked = await receiver.peekMessages(10);
    const [due] = await receiveAll(receiver, 1);
    await receiver.completeMessage(due);
    return {
      peeked: peeked.map((m) => m.body),
      laterSequence: Number(later[0]),
      peekedSequences: peeked.map((m) => Number(m.sequenceNumber)),
      peekedScheduled: peeked[0].scheduledEnqueueTimeUtc instanceof Date,
      due: due.body,
    };
  },

  // session state, session lock renewal, a locked session, no session left
  async sessions(client, queue) {
    const sender = client.createSender(queue);
    await sender.sendMessages([{ body: "a0", sessionId: "a" }, { body: "a1", sessionId: "a" }]);
    const receiver = await client.acceptNextSession(queue);
    const stateBefore = await receiver.getSessionState();
    await receiver.setSessionState("state of a");
    const stateAfter = await receiver.getSessionState();
    const lockedUntil = receiver.sessionLockedUntilUtc;
    const renewed = await receiver.renewSessionLock();
    const got = await receiveAll(receiver, 2);
    for (const message of got) {
      await receiver.completeMessage(message);
    }
    const locked = await errorOf(client.acceptSession(queue, "a"));
    await receiver.close();
    const started = Date.now();
    const none = await errorOf(client.acceptNextSession(queue));
    return {
      sessionId: receiver.sessionId,
      stateBefore: stateBefore === undefined ? null : stateBefore,
      stateAfter: Buffer.isBuffer(stateAfter) ? stateAfter.toString() : stateAfter,
      lockedUntilInFuture: lockedUntil.getTime() > Date.now(),
      renewedNotEarlier: renewed.getTime() >= lockedUntil.getTime(),
      received: got.map((m) => m.body),
      locked,
      none,
      noneSeconds: (Date.now() - started) / 1000,
    };
  },
};

async function main() {
  const [scenario, entity] = process.argv.slice(2);
  const run = scenarios[scenario];
  if (!run || !entity) {
    throw new Error(`usage: node conformance.js {${Object.keys(scenarios)}} ENTITY`);
  }
  const client = new ServiceBusClient(process.env.SB_CONNECTION_STRING, {
    retryOptions: { maxRetries: 0, timeoutInMs: 3000 },
  });
  try {
    process.stdout.write(JSON.stringify(await run(client, entity)) + "\n");
  } finally {
    await client.close();
  }
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
