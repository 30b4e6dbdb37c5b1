// The official OpenAI Node client (openai@^6) against privax. Driven by test_openai_client.py:
//   PX_PORT=<gateway port> PX_TENANT=<tenant> PX_MODEL=<model> node test_openai.mjs
// Checks: a JSON completion with usage; a stream whose joined deltas equal the JSON content and
// whose final chunk carries usage; models.list; a wrong key -> APIError 401 invalid_token.
// Prints one JSON line {"ok":true,"usage":{prompt_tokens,completion_tokens,total_tokens},"requests":N}
// with the usage the client was told (summed), or {"ok":false,"error":...} and exits 1.
import OpenAI from 'openai';

const port = process.env.PX_PORT;
const tenant = process.env.PX_TENANT || 'acme';
const model = process.env.PX_MODEL || 'qwen2.5-coder:7b';
const baseURL = `http://127.0.0.1:${port}/v1`;

const fail = (msg) => {
  throw new Error(msg);
};
const check = (cond, msg) => {
  if (!cond) fail(msg);
};

function checkUsage(u, where) {
  check(u && typeof u === 'object', `${where}: no usage`);
  for (const k of ['prompt_tokens', 'completion_tokens', 'total_tokens']) {
    check(Number.isInteger(u[k]) && u[k] >= 0, `${where}: usage.${k} = ${JSON.stringify(u[k])}`);
  }
  check(u.total_tokens === u.prompt_tokens + u.completion_tokens, `${where}: total != prompt + completion`);
}

async function main() {
  check(port, 'PX_PORT is not set');
  const client = new OpenAI({
    baseURL,
    apiKey: 'test-token',
    defaultHeaders: { 'X-Tenant-ID': tenant },
    maxRetries: 0,
    timeout: 60_000,
  });
  const total = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 };
  const add = (u) => {
    for (const k of Object.keys(total)) total[k] += u[k];
  };
  let requests = 0;
  const messages = [{ role: 'user', content: 'Explain what a GPU does, briefly.' }];

  // 1. JSON completion.
  const c = await client.chat.completions.create({ model, messages });
  requests++;
  check(c.object === 'chat.completion', `object = ${c.object}`);
  const content = c.choices?.[0]?.message?.content;
  check(typeof content === 'string' && content.length > 0, 'empty JSON content');
  checkUsage(c.usage, 'JSON');
  add(c.usage);

  // 2. The same prompt streamed: joined deltas == JSON content; the final chunk has usage.
  const stream = await client.chat.completions.create({ model, messages, stream: true });
  requests++;
  let joined = '';
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    check(chunk.object === 'chat.completion.chunk', `chunk object = ${chunk.object}`);
    for (const ch of chunk.choices || []) joined += ch.delta?.content || '';
    if (chunk.usage) usage = chunk.usage;
  }
  check(chunks > 1, `only ${chunks} chunk(s)`);
  check(joined === content, `stream ${JSON.stringify(joined)} != JSON ${JSON.stringify(content)}`);
  checkUsage(usage, 'stream');
  check(usage.completion_tokens === c.usage.completion_tokens, 'stream and JSON completion_tokens differ');
  add(usage);

  // 3. models.list (not metered as a completion).
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  check(ids.includes(model), `models.list ${JSON.stringify(ids)} lacks ${model}`);

  // 4. A wrong key: APIError 401 with the contract's error object.
  const bad = new OpenAI({ baseURL, apiKey: 'wrong-key', defaultHeaders: { 'X-Tenant-ID': tenant }, maxRetries: 0 });
  try {
    await bad.chat.completions.create({ model, messages });
    fail('wrong key was accepted');
  } catch (e) {
    check(e instanceof OpenAI.APIError, `wrong key: not an APIError: ${e}`);
    check(e.status === 401, `wrong key: status ${e.status}`);
    check(e.code === 'invalid_token', `wrong key: code ${e.code}`);
    check(e.type === 'authentication_error', `wrong key: type ${e.type}`);
  }

  console.log(JSON.stringify({ ok: true, usage: total, requests, content_chars: content.length }));
}

main().catch((e) => {
  console.log(JSON.stringify({ ok: false, error: String(e && e.stack ? e.stack : e) }));
  process.exit(1);
});
