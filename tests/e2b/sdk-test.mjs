// The unchanged E2B JS SDK against a vmfactory gateway (tests/test_e2b.c
// starts the daemon and the gateway and runs this in two phases):
//   node sdk-test.mjs main            everything, leaving one sandbox for...
//   node sdk-test.mjs after-restart   ...a restarted gateway, which must
//                                     still know it, its metadata and key
// Environment: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY (team a),
// E2B_TEST_KEY_B (team b), E2B_TEST_STATE (a file between the phases),
// E2B_TEST_GATEWAY_PID (its memory is watched), E2B_TEST_IDLE_S (the
// gateway's idle_timeout).
// Prints one "ok:" or "FAIL:" line per check; exits 1 if any failed.
import { readFileSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import { Sandbox, CommandExitError, NotFoundError, TimeoutError, SandboxError, FileNotFoundError, InvalidArgumentError } from 'e2b'

const api = process.env.E2B_API_URL
const keyA = process.env.E2B_API_KEY
const keyB = process.env.E2B_TEST_KEY_B
const stateFile = process.env.E2B_TEST_STATE
let failures = 0

function check(ok, what) {
  console.log(`${ok ? 'ok:  ' : 'FAIL:'} ${what}`)
  if (!ok) failures++
}

// A check that must throw: fn's error is given to pred.
async function throws(what, fn, pred) {
  try {
    const v = await fn()
    check(false, `${what} (no error; got ${JSON.stringify(v)})`)
  } catch (e) {
    const ok = pred(e)
    check(ok, `${what}${ok ? '' : ` (got ${e?.name}: ${e?.message})`}`)
  }
}

async function step(what, fn) {
  try {
    await fn()
  } catch (e) {
    check(false, `${what}: ${e?.name}: ${e?.message}`)
  }
}

async function raw(method, path, { key = keyA, body, headers = {} } = {}) {
  const h = { ...headers }
  if (key) h['X-API-KEY'] = key
  const res = await fetch(api + path, { method, headers: h, body })
  const text = await res.text()
  let json
  try { json = JSON.parse(text) } catch { json = undefined }
  return { status: res.status, json, text }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// Until cond() holds or ms pass; whether it held.
async function waitFor(cond, ms) {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(100))
    if (await cond()) return true
  return !!(await cond())
}

function gatewayRssKiB() {
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${process.env.E2B_TEST_GATEWAY_PID}/status`, 'utf8'))
  return m ? +m[1] : -1
}

// A Start stream read by nobody: the client stops after the first bytes.
// Resolves with what it got once the gateway drops it (or the stream ends).
function stalledStart(sbx, cmd) {
  const msg = Buffer.from(JSON.stringify({ process: { cmd: '/bin/bash', args: ['-l', '-c', cmd] } }))
  const body = Buffer.concat([Buffer.from([0, msg.length >>> 24, (msg.length >>> 16) & 255, (msg.length >>> 8) & 255, msg.length & 255]), msg])
  const url = new URL(process.env.E2B_SANDBOX_URL + '/process.Process/Start')
  let res, got = 0, ended = false
  const done = new Promise((resolve) => {
    const req = http.request(url, {
      method: 'POST', agent: false,
      headers: { 'Content-Type': 'application/connect+json', 'E2b-Sandbox-Id': sbx.sandboxId, 'E2b-Sandbox-Port': '49983',
        'X-Access-Token': sbx.envdAccessToken, 'Content-Length': body.length },
    }, (r) => {
      res = r
      r.on('data', (d) => { got += d.length; if (got > 0 && !ended) r.pause() })
      r.on('end', () => resolve({ got, complete: true }))
      r.on('error', () => resolve({ got, complete: false }))
      r.on('aborted', () => resolve({ got, complete: false }))
    })
    req.on('error', () => resolve({ got, complete: false }))
    req.end(body)
  })
  return { done, resume: () => { ended = true; res?.resume() }, bytes: () => got }
}

const errorBody = (r, status) =>
  r.status === status && r.json && r.json.code === status && typeof r.json.message === 'string' && r.json.message.length > 0

async function main() {
  const t0 = Date.now()
  const sbx = await Sandbox.create({ metadata: { suite: 'e2b', n: '1' }, envs: { GLOBAL: 'g1' }, timeoutMs: 600_000 })
  const tCreate = Date.now() - t0
  check(/^[a-z0-9]{20}$/.test(sbx.sandboxId), `create: sandbox ${sbx.sandboxId} (${tCreate} ms)`)

  await step('commands.run', async () => {
    const t1 = Date.now()
    const r = await sbx.commands.run("python3 -c 'print(6*7)'")
    check(r.stdout === '42\n' && r.exitCode === 0, `python3 -c 'print(6*7)' -> ${JSON.stringify(r.stdout)} (first command ${Date.now() - t1} ms)`)
  })
  await step('stdout, stderr, exit code', async () => {
    const out = []
    try {
      await sbx.commands.run('echo out; echo err >&2; exit 3', { onStdout: (d) => out.push(d) })
      check(false, 'exit 3 throws CommandExitError')
    } catch (e) {
      check(e instanceof CommandExitError, `exit 3 throws CommandExitError (${e?.name})`)
      check(e.exitCode === 3 && e.stdout === 'out\n' && e.stderr === 'err\n',
        `its exitCode ${e.exitCode}, stdout ${JSON.stringify(e.stdout)}, stderr ${JSON.stringify(e.stderr)}`)
      check(/exit status 3/.test(e.message), `its message: ${e.message}`)
    }
    check(out.join('') === 'out\n', `onStdout saw ${JSON.stringify(out.join(''))}`)
  })
  await step('envs', async () => {
    const r = await sbx.commands.run('echo "$GLOBAL $LOCAL"', { envs: { LOCAL: 'l1' } })
    check(r.stdout === 'g1 l1\n', `sandbox envs and command envs: ${JSON.stringify(r.stdout)}`)
  })
  await step('user, home, sudo', async () => {
    const r = await sbx.commands.run('whoami; pwd; echo $HOME; sudo -n whoami')
    check(r.stdout === 'user\n/home/user\n/home/user\nroot\n' && r.stderr === '',
      `runs as user in /home/user, passwordless sudo: ${JSON.stringify(r.stdout)} ${JSON.stringify(r.stderr)}`)
    const root = await sbx.commands.run('whoami; pwd', { user: 'root' })
    check(root.stdout === 'root\n/root\n', `user root: ${JSON.stringify(root.stdout)}`)
    const cwd = await sbx.commands.run('pwd', { cwd: '/tmp' })
    check(cwd.stdout === '/tmp\n', `cwd /tmp: ${JSON.stringify(cwd.stdout)}`)
  })
  await step('large output', async () => {
    const r = await sbx.commands.run("head -c 3000000 /dev/zero | tr '\\0' x")
    check(r.stdout.length === 3000000 && /^x+$/.test(r.stdout), `3 MB of stdout, whole: ${r.stdout.length} bytes`)
  })
  await throws('a command over its timeoutMs is killed: TimeoutError',
    () => sbx.commands.run('sleep 60', { timeoutMs: 3000 }), (e) => e instanceof TimeoutError)
  await step('files', async () => {
    // Relative paths are the user's home's; writes make the parents.
    const w = await sbx.files.write('notes/a.txt', 'hello files\n')
    check(w.path === '/home/user/notes/a.txt' && w.name === 'a.txt', `files.write: ${JSON.stringify(w)}`)
    check(await sbx.files.read('/home/user/notes/a.txt') === 'hello files\n', 'files.read reads it back')
    // More than one agent chunk (48 KiB), as bytes.
    const big = Buffer.alloc(200 * 1024, 0).map((_, i) => (i * 7 + (i >> 10)) & 255)
    await sbx.files.write('/tmp/big.bin', big)
    const back = Buffer.from(await sbx.files.read('/tmp/big.bin', { format: 'bytes' }))
    check(back.equals(big), `200 KiB written and read back whole: ${back.length} bytes`)
    const who = await sbx.commands.run('stat -c %U /home/user/notes/a.txt; cat /home/user/notes/a.txt')
    check(who.stdout === 'user\nhello files\n', `written as the user, seen by commands: ${JSON.stringify(who.stdout)}`)
    check(await sbx.files.makeDir('notes/sub/deeper') === true, 'files.makeDir makes the parents')
    check(await sbx.files.makeDir('notes/sub/deeper') === false, 'files.makeDir of an existing directory: false')
    const list = await sbx.files.list('notes')
    check(JSON.stringify(list.map((e) => [e.name, e.type])) === '[["a.txt","file"],["sub","dir"]]',
      `files.list: ${JSON.stringify(list.map((e) => [e.name, e.type, e.path]))}`)
    const deep = await sbx.files.list('notes', { depth: 3 })
    check(deep.some((e) => e.path === '/home/user/notes/sub/deeper' && e.type === 'dir'), `files.list depth 3: ${deep.length} entries`)
    check(await sbx.files.exists('notes/a.txt') && !(await sbx.files.exists('notes/none')), 'files.exists')
    const moved = await sbx.files.rename('notes/a.txt', 'notes/b.txt')
    check(moved.path === '/home/user/notes/b.txt' && !(await sbx.files.exists('notes/a.txt')), `files.rename: ${moved.path}`)
    const info = await sbx.files.getInfo('notes/b.txt')
    check(info.size === 12 && info.owner === 'user' && info.modifiedTime instanceof Date, `files.getInfo: ${JSON.stringify(info)}`)
    await sbx.files.remove('notes')
    check(!(await sbx.files.exists('notes')), 'files.remove takes the directory and what is in it')
    await sbx.files.write([{ path: '/tmp/m1', data: 'one' }, { path: '/tmp/m2', data: 'two' }])
    check(await sbx.files.read('/tmp/m1') === 'one' && await sbx.files.read('/tmp/m2') === 'two', 'files.write of several files')
  })
  await step('files: raw uploads, good and bad', async () => {
    const envd = (path, init = {}) => fetch(process.env.E2B_SANDBOX_URL + path, { ...init,
      headers: { 'E2b-Sandbox-Id': sbx.sandboxId, 'E2b-Sandbox-Port': '49983', 'X-Access-Token': sbx.envdAccessToken,
        ...(init.headers || {}) } })
    let r = await envd('/files?path=/tmp/oct&username=user', { method: 'POST', body: 'raw bytes',
      headers: { 'Content-Type': 'application/octet-stream' } })
    const j = await r.json()
    check(r.status === 200 && j[0]?.path === '/tmp/oct', `an octet-stream upload: ${r.status} ${JSON.stringify(j)}`)
    check(await sbx.files.read('/tmp/oct') === 'raw bytes', 'it reads back')
    const bad = [
      ['multipart without a boundary', 'multipart/form-data', 'x'],
      ['multipart without a file part', 'multipart/form-data; boundary=b1',
        '--b1\r\nContent-Disposition: form-data; name="other"\r\n\r\nx\r\n--b1--\r\n'],
      ['multipart cut before its closing boundary', 'multipart/form-data; boundary=b1',
        '--b1\r\nContent-Disposition: form-data; name="file"; filename="/tmp/cut"\r\n\r\nxyz'],
    ]
    for (const [what, ct, body] of bad) {
      r = await envd('/files?path=/tmp/bad', { method: 'POST', body, headers: { 'Content-Type': ct } })
      const t = await r.text()
      check(r.status === 400 && /multipart/.test(t), `${what}: ${r.status} ${t}`)
    }
    check(!(await sbx.files.exists('/tmp/bad')) && !(await sbx.files.exists('/tmp/cut')), 'a bad upload writes nothing')
    r = await envd('/files')
    check(r.status === 400, `GET /files without a path: ${r.status}`)
    r = await envd('/files?path=/tmp/oct&username=mallory')
    check(r.status === 400 && /mallory/.test(await r.text()), `an unknown user: ${r.status}`)
  })
  await throws('files.read of a missing file: FileNotFoundError', () => sbx.files.read('/tmp/none'),
    (e) => e instanceof FileNotFoundError)
  // The guest's permissions decide, for the user asked for.
  await sbx.commands.run('echo s > /tmp/secret; chmod 600 /tmp/secret', { user: 'root' })
  await throws("files.read of root's 0600 file as user: refused", () => sbx.files.read('/tmp/secret'),
    (e) => /403/.test(e?.message) && /Permission denied/.test(e?.message))
  await step('files as root', async () => {
    check(await sbx.files.read('/tmp/secret', { user: 'root' }) === 's\n', "files.read as root reads root's file")
  })
  await throws('files.write where the user may not', () => sbx.files.write('/root/x', 'x'),
    (e) => /Permission denied/.test(e?.message))
  await throws('files.list of a file: InvalidArgumentError', () => sbx.files.list('/tmp/m1'),
    (e) => e instanceof InvalidArgumentError)
  await step('files.watchDir sees a file written, renamed and removed (recursive too)', async () => {
    await sbx.files.makeDir('watched/sub')
    const seen = []
    const h = await sbx.files.watchDir('watched', (e) => seen.push(`${e.type}:${e.name}`), { recursive: true })
    const has = (x) => seen.includes(x)
    await sbx.files.write('watched/a.txt', 'one')
    check(await waitFor(() => has('create:a.txt') && has('write:a.txt'), 20000), `create and write of a.txt: ${seen}`)
    await sbx.files.write('watched/sub/deep.txt', 'two')
    check(await waitFor(() => has('create:sub/deep.txt'), 20000), `a file below it (recursive): ${seen}`)
    await sbx.files.rename('watched/a.txt', 'watched/b.txt')
    check(await waitFor(() => has('rename:a.txt') && has('create:b.txt'), 20000), `rename: ${seen}`)
    await sbx.files.remove('watched/b.txt')
    check(await waitFor(() => has('remove:b.txt'), 20000), `remove: ${seen}`)
    await h.stop()
    const n = seen.length
    await sbx.files.write('watched/after.txt', 'x')
    // A later event on another watch shows the stopped one stayed quiet.
    const seen2 = []
    const h2 = await sbx.files.watchDir('watched', (e) => seen2.push(`${e.type}:${e.name}`))
    await sbx.files.write('watched/c.txt', 'y')
    check(await waitFor(() => seen2.includes('create:c.txt'), 20000), `a second watch: ${seen2}`)
    check(seen.length === n, `nothing after stop: ${seen.slice(n)}`)
    await h2.stop()
    await sbx.files.remove('watched')
  })
  await throws('files.watchDir of a missing directory: NotFoundError', () => sbx.files.watchDir('/tmp/none', () => {}),
    (e) => /cannot watch/.test(e?.message))
  await throws('files.watchDir with includeEntry says it is not served', () =>
    sbx.files.watchDir('/tmp', () => {}, { includeEntry: true }), (e) => /includeEntry|update the template/.test(e?.message))

  // Processes that outlive their request: background + list + kill + wait,
  // stdin, connect, a terminal's input and size.
  await step('background, list, kill, wait, kill twice', async () => {
    const out = []
    const h = await sbx.commands.run('echo started; sleep 600', { background: true, onStdout: (d) => out.push(d) })
    check(h.pid > 0, `background: pid ${h.pid}`)
    check(await waitFor(() => out.join('') === 'started\n', 30000), `its output streams: ${JSON.stringify(out.join(''))}`)
    const listed = await sbx.commands.list()
    const mine = listed.find((p) => p.pid === h.pid)
    check(mine && mine.cmd === '/bin/bash' && mine.args[2] === 'echo started; sleep 600',
      `commands.list shows it: ${JSON.stringify(mine)}`)
    check(await h.kill(), 'kill: true')
    await throws('its wait: CommandExitError, killed', () => h.wait(),
      (e) => e instanceof CommandExitError && /signal: killed/.test(e.message))
    check((await sbx.commands.kill(h.pid)) === false, 'kill twice: false (not found)')
    check(!(await sbx.commands.list()).some((p) => p.pid === h.pid), 'gone from commands.list')
  })
  await step('stdin', async () => {
    const h = await sbx.commands.run('cat; echo end', { background: true, stdin: true })
    await h.sendStdin('hello\n')
    await sbx.commands.sendStdin(h.pid, 'world\n')
    await h.closeStdin()
    const r = await h.wait()
    check(r.stdout === 'hello\nworld\nend\n', `sendStdin, closeStdin: ${JSON.stringify(r.stdout)}`)
  })
  await step('connect', async () => {
    const h = await sbx.commands.run('read l; echo "got $l"', { background: true, stdin: true })
    const seen = []
    const c = await sbx.commands.connect(h.pid, { onStdout: (d) => seen.push(d) })
    check(c.pid === h.pid, `connect by pid ${c.pid}`)
    await c.sendStdin('x\n')
    const r = await c.wait()
    check(r.stdout === 'got x\n' && seen.join('') === 'got x\n', `the connected handle gets the output and exit: ${JSON.stringify(r.stdout)}`)
    const first = await h.wait()
    check(first.stdout === 'got x\n', `so does the starting one: ${JSON.stringify(first.stdout)}`)
    await throws('connect to a pid that is not running: not found', () => sbx.commands.connect(999999),
      (e) => e instanceof NotFoundError || /not found|no process/i.test(e?.message))
  })
  await step('pty input and resize', async () => {
    let data = ''
    const dec = new TextDecoder()
    const t = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { data += dec.decode(d) } })
    await sbx.pty.resize(t.pid, { cols: 100, rows: 30 })
    await sbx.pty.sendInput(t.pid, new TextEncoder().encode('stty size; exit\n'))
    await t.wait()
    check(/30 100/.test(data), `pty.sendInput ran stty after pty.resize: ${JSON.stringify(data.slice(-200))}`)
  })

  // A second sandbox; list with a metadata filter, and in pages.
  const sbx2 = await Sandbox.create({ metadata: { suite: 'e2b', n: '2', 'a b&c': 'x=y z%' }, timeoutMs: 600_000 })
  await step('list', async () => {
    const only2 = await Sandbox.list({ query: { metadata: { n: '2' } } }).nextItems()
    check(only2.length === 1 && only2[0].sandboxId === sbx2.sandboxId, `list metadata n=2: ${only2.map((s) => s.sandboxId)}`)
    const odd = await Sandbox.list({ query: { metadata: { 'a b&c': 'x=y z%' } } }).nextItems()
    check(odd.length === 1 && odd[0].sandboxId === sbx2.sandboxId, 'list metadata with reserved characters')
    const both = await Sandbox.list({ query: { metadata: { suite: 'e2b' } } }).nextItems()
    check(both.length === 2, `list metadata suite=e2b: ${both.length} sandboxes`)
    const p = Sandbox.list({ limit: 1 })
    const page1 = await p.nextItems()
    check(page1.length === 1 && p.hasNext, 'list limit 1: one, and a next token')
    const page2 = await p.nextItems()
    check(page2.length === 1 && page2[0].sandboxId !== page1[0].sandboxId && !p.hasNext,
      `list page 2: the other one, no more (${page1[0]?.sandboxId}, ${page2[0]?.sandboxId})`)
    const info = await Sandbox.getInfo(sbx2.sandboxId)
    check(info.metadata.n === '2' && info.state === 'running' && info.templateId === 'base' && info.cpuCount >= 1,
      `getInfo: ${JSON.stringify({ metadata: info.metadata, state: info.state, template: info.templateId })}`)
  })

  // A client that stops reading holds its sandbox's processes, not the
  // gateway: other sandboxes are served, memory stays flat, and the
  // client is dropped after the gateway's idle timeout.
  await step('a client that stops reading', async () => {
    const rss0 = gatewayRssKiB()
    const slow = stalledStart(sbx2, 'head -c 40000000 /dev/zero')
    await sleep(4000)
    const t = Date.now()
    const other = await sbx.commands.run('echo other')
    check(other.stdout === 'other\n' && Date.now() - t < 10000, `another sandbox is served meanwhile (${Date.now() - t} ms)`)
    const rss1 = gatewayRssKiB()
    check(rss1 - rss0 < 32 * 1024, `the gateway's memory stays flat: ${rss0} -> ${rss1} KiB, the client took ${slow.bytes()} bytes`)
    await sleep((+process.env.E2B_TEST_IDLE_S + 3) * 1000)
    slow.resume()
    const got = await Promise.race([slow.done, sleep(60000).then(() => ({ timeout: true }))])
    check(!got.timeout && !got.complete && got.got < 40000000,
      `it is dropped after the idle timeout (${JSON.stringify(got)})`)
    const after = await sbx2.commands.run('echo after')
    check(after.stdout === 'after\n', 'its sandbox serves the next command')
  })

  // Two keys cannot see each other's sandboxes.
  await step('keys', async () => {
    const seenByB = await Sandbox.list({ apiKey: keyB }).nextItems()
    check(seenByB.length === 0, `key b lists none of key a's sandboxes (${seenByB.length})`)
    await throws('key b: getInfo of key a\'s sandbox is not found', () => Sandbox.getInfo(sbx.sandboxId, { apiKey: keyB }),
      (e) => e instanceof NotFoundError)
    check((await Sandbox.kill(sbx.sandboxId, { apiKey: keyB })) === false, 'key b cannot kill it (not found)')
    await throws('key b cannot connect to it', () => Sandbox.connect(sbx.sandboxId, { apiKey: keyB }),
      (e) => e instanceof NotFoundError)
    const b = await Sandbox.create({ apiKey: keyB, metadata: { suite: 'e2b' } })
    const seenByA = await Sandbox.list({ query: { metadata: { suite: 'e2b' } } }).nextItems()
    check(!seenByA.some((s) => s.sandboxId === b.sandboxId), 'key a does not list key b\'s sandbox')
    const rb = await b.commands.run('echo b')
    check(rb.stdout === 'b\n', 'key b runs commands in its own sandbox')
    check(await b.kill(), 'key b kills its sandbox')
  })

  // Pause and connect: the sandbox comes back as it was.
  await step('pause, connect', async () => {
    await sbx2.commands.run('echo kept > /tmp/kept')
    const bg = await sbx2.commands.run('sleep 600', { background: true, timeoutMs: 0 })
    check(await sbx2.pause(), 'pause')
    check((await sbx2.pause()) === false, 'pause again: already paused (409)')
    check((await Sandbox.getInfo(sbx2.sandboxId)).state === 'paused', 'getInfo: paused')
    check((await sbx2.isRunning()) === false, 'isRunning: false while paused (envd 502)')
    await throws('a command in a paused sandbox fails', () => sbx2.commands.run('true'), (e) => e instanceof SandboxError)
    const back = await Sandbox.connect(sbx2.sandboxId, { timeoutMs: 600_000 })
    const r = await back.commands.run('cat /tmp/kept')
    check(r.stdout === 'kept\n', `connect resumes it, its files kept: ${JSON.stringify(r.stdout)}`)
    check((await Sandbox.getInfo(sbx2.sandboxId)).state === 'running', 'getInfo: running')
    const again = await Sandbox.connect(sbx2.sandboxId)
    check(again.sandboxId === sbx2.sandboxId, 'connect to a running sandbox')
    const procs = await back.commands.list()
    check(procs.some((p) => p.pid === bg.pid && p.args[2] === 'sleep 600'),
      `a background command outlives the pause: ${JSON.stringify(procs)}`)
    check(await back.commands.kill(bg.pid), 'and is killed after it')
  })
  await step('setTimeout', async () => {
    await sbx2.setTimeout(120_000)
    const end = (await Sandbox.getInfo(sbx2.sandboxId)).endAt.getTime()
    check(Math.abs(end - (Date.now() + 120_000)) < 10_000, `setTimeout 120 s: endAt in ${(end - Date.now()) / 1000} s`)
  })
  await step('kill twice', async () => {
    check(await sbx2.kill(), 'kill')
    check((await Sandbox.kill(sbx2.sandboxId)) === false, 'kill again: not found (404)')
    await throws('getInfo after kill: not found', () => Sandbox.getInfo(sbx2.sandboxId), (e) => e instanceof NotFoundError)
    check(!(await sbx2.isRunning()), 'isRunning after kill: false (envd 502)')
  })

  // Bad input: clear error bodies, nothing left behind.
  await step('bad input', async () => {
    await throws('unknown template', () => Sandbox.create('no-such-template'),
      (e) => /template 'no-such-template' not found/.test(e?.message))
    let r = await raw('POST', '/v2/sandboxes', { body: '{"templateID": "base",', headers: { 'Content-Type': 'application/json' } })
    check(errorBody(r, 400), `malformed JSON: ${r.status} ${r.text}`)
    r = await raw('POST', '/v2/sandboxes', { body: '["base"]', headers: { 'Content-Type': 'application/json' } })
    check(errorBody(r, 400), `a JSON array: ${r.status} ${r.text}`)
    r = await raw('POST', '/v2/sandboxes', { body: '{"templateID": 7}', headers: { 'Content-Type': 'application/json' } })
    check(errorBody(r, 400), `templateID not a string: ${r.status} ${r.text}`)
    r = await raw('GET', '/v2/sandboxes', { key: null })
    check(errorBody(r, 401), `no key: ${r.status} ${r.text}`)
    r = await raw('GET', '/v2/sandboxes', { key: 'e2b_00000000000000000000000000000000' })
    check(errorBody(r, 401), `wrong key: ${r.status} ${r.text}`)
    r = await raw('POST', '/v2/sandboxes', { key: null, body: 'x'.repeat(2 << 20) })
    check(errorBody(r, 401), `no key, 2 MiB body: ${r.status}`)
    r = await raw('POST', '/v2/sandboxes', { body: JSON.stringify({ templateID: 'base', metadata: { big: 'x'.repeat(8 << 20) } }),
      headers: { 'Content-Type': 'application/json' } })
    check(errorBody(r, 413), `an 8 MiB body: ${r.status} ${r.text.slice(0, 200)}`)
    r = await raw('GET', '/sandboxes/abcdefghij0123456789')
    check(errorBody(r, 404), `unknown sandbox id: ${r.status} ${r.text}`)
    r = await raw('DELETE', '/sandboxes/../../etc')
    check(r.status === 404 || r.status === 400, `a path as sandbox id: ${r.status}`)
    r = await raw('GET', '/templates')
    check(errorBody(r, 501) && /not served/.test(r.json.message), `an E2B call not served: ${r.status} ${r.text}`)
    await throws('connect to an unknown sandbox', () => Sandbox.connect('abcdefghij0123456789'), (e) => e instanceof NotFoundError)
    const envd = await fetch(process.env.E2B_SANDBOX_URL + '/health', { headers: { 'E2b-Sandbox-Id': 'abcdefghij0123456789', 'E2b-Sandbox-Port': '49983' } })
    check(envd.status === 502, `envd of an unknown sandbox: ${envd.status}`)
    const left = await Sandbox.list({ query: { metadata: { suite: 'e2b' } } }).nextItems()
    check(left.length === 1 && left[0].sandboxId === sbx.sandboxId, `after bad input, key a has only its first sandbox (${left.length})`)
  })

  // Leases: a sandbox ends when its timeout runs out, killed or paused.
  await step('timeouts', async () => {
    const short = await Sandbox.create({ timeoutMs: 2000, metadata: { suite: 'e2b-lease' } })
    const paused = await Sandbox.create({ timeoutMs: 2000, lifecycle: { onTimeout: 'pause' }, metadata: { suite: 'e2b-lease' } })
    let gone = false, nowPaused = false
    for (const deadline = Date.now() + 60000; Date.now() < deadline && !(gone && nowPaused);) {
      await sleep(500)
      gone = gone || !(await Sandbox.list({ query: { metadata: { suite: 'e2b-lease' } } }).nextItems()).some((x) => x.sandboxId === short.sandboxId)
      nowPaused = nowPaused || (await Sandbox.getInfo(paused.sandboxId)).state === 'paused'
    }
    check(gone, 'a sandbox whose timeout ran out is killed')
    check(nowPaused, 'one created with onTimeout pause is paused instead')
    check(await paused.kill(), 'the paused one is killed')
  })

  // For the restarted gateway: the first sandbox stays, a command running.
  const bg = await sbx.commands.run('echo "$GLOBAL" > /tmp/bg; sleep 600', { background: true, timeoutMs: 0 })
  writeFileSync(stateFile, JSON.stringify({ id: sbx.sandboxId, pid: bg.pid }))
  console.log(`bench: sdk_create_ms ${tCreate}`)
}

async function afterRestart() {
  const { id, pid } = JSON.parse(readFileSync(stateFile, 'utf8'))
  await step('after a gateway restart', async () => {
    const info = await Sandbox.getInfo(id)
    check(info.metadata.n === '1' && info.state === 'running', `its metadata kept: ${JSON.stringify(info.metadata)}`)
    await throws('key b still cannot see it', () => Sandbox.getInfo(id, { apiKey: keyB }), (e) => e instanceof NotFoundError)
    const sbx = await Sandbox.connect(id)
    const r = await sbx.commands.run('echo "$GLOBAL"; whoami')
    check(r.stdout === 'g1\nuser\n', `commands run, with its envs: ${JSON.stringify(r.stdout)}`)
    const procs = await sbx.commands.list()
    check(procs.some((p) => p.pid === pid && p.cmd === '/bin/bash'),
      `the background command started before the restart is listed: ${JSON.stringify(procs)}`)
    check(await sbx.commands.kill(pid), 'and killed')
    check((await sbx.commands.run('cat /tmp/bg')).stdout === 'g1\n', 'it had its sandbox envs')
    check(await sbx.kill(), 'kill')
  })
  const left = [...await Sandbox.list().nextItems(), ...await Sandbox.list({ apiKey: keyB }).nextItems()]
  check(left.length === 0, `no sandbox left (${left.map((s) => s.sandboxId)})`)
}

const phase = process.argv[2]
try {
  if (phase === 'main') await main()
  else if (phase === 'after-restart') await afterRestart()
  else throw new Error(`unknown phase ${phase}`)
} catch (e) {
  check(false, `${phase}: ${e?.name}: ${e?.message}\n${e?.stack}`)
}
console.log(failures ? `${failures} check(s) failed` : 'all checks passed')
process.exit(failures ? 1 : 0)
