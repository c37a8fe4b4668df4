// Subscription rules through the JS SDK rule manager (AMQP add-rule, remove-rule, enumerate-rules).
// Usage: node rules.js CONNECTION_STRING TOPIC SUBSCRIPTION  -> prints a JSON summary.
const { ServiceBusClient } = require("@azure/service-bus");
async function list(rm) { const out = []; for await (const r of rm.listRules()) out.push(r); return out; }
async function main() {
  const [conn, topic, sub] = process.argv.slice(2);
  const client = new ServiceBusClient(conn);
  const rm = client.createRuleManager(topic, sub);
  const out = {};
  out.initial = (await list(rm)).map(r => r.name);
  await rm.createRule("red", { sqlExpression: "color = 'red'" }, { sqlExpression: "SET seen = 1" });
  await rm.createRule("corr", { correlationId: "c1", applicationProperties: { k: "v" } });
  try { await rm.createRule("bad", { sqlExpression: "color = = 1" }); out.bad = "accepted"; }
  catch (e) { out.bad = e.code || e.name; }
  try { await rm.createRule("red", { sqlExpression: "1=1" }); out.dup = "accepted"; }
  catch (e) { out.dup = e.code || e.name; }
  await rm.deleteRule("$Default");
  out.rules = (await list(rm)).map(r => ({ name: r.name, filter: r.filter, action: r.action }));
  try { await rm.deleteRule("nope"); out.missing = "accepted"; }
  catch (e) { out.missing = e.code || e.name; }
  await client.close();
  console.log(JSON.stringify(out));
}
main().catch(e => { console.error(e); process.exit(1); });
