import test from 'ava';
import { parseReference, referenceString, isLoopbackHost, parseRegistryHost } from '../registry/reference.js';
import { parseDigest } from '../registry/digest.js';
import { RegfsError } from '../util/errors.js';

const HEX = 'a'.repeat(64);

test('parses registry references with port, nested path, tag and digest', (t) => {
  t.deepEqual(parseReference('localhost:5000/a/b/c:v1.0'), { kind: 'remote', registry: 'localhost:5000', repository: 'a/b/c', tag: 'v1.0', digest: undefined });
  t.deepEqual(parseReference(`myreg.azurecr.io/samples/artifact@sha256:${HEX}`), { kind: 'remote', registry: 'myreg.azurecr.io', repository: 'samples/artifact', tag: undefined, digest: `sha256:${HEX}` });
  t.deepEqual(parseReference(`127.0.0.1:5000/x:t@sha256:${HEX}`), { kind: 'remote', registry: '127.0.0.1:5000', repository: 'x', tag: 't', digest: `sha256:${HEX}` });
  t.deepEqual(parseReference('[::1]:5000/x'), { kind: 'remote', registry: '[::1]:5000', repository: 'x', tag: undefined, digest: undefined });
  t.is(referenceString(parseReference('localhost:5000/a_b/c-d__e:T_1')), 'localhost:5000/a_b/c-d__e:T_1');
});

test('parses OCI layout references, with oci: or --oci-layout', (t) => {
  t.deepEqual(parseReference('oci:/tmp/store/x:1.0'), { kind: 'layout', path: '/tmp/store/x', tag: '1.0', digest: undefined });
  t.deepEqual(parseReference('./layout:v2', { layout: true }), { kind: 'layout', path: './layout', tag: 'v2', digest: undefined });
  t.deepEqual(parseReference('oci:rel/dir'), { kind: 'layout', path: 'rel/dir', tag: undefined, digest: undefined });
});

const bad: Array<[string, RegExp]> = [
  ['', /empty reference/],
  ['hello:v1', /registry is missing/],
  ['hello/world:v1', /registry "hello" is not a host/],
  ['localhost:5000/UPPER:v1', /repository "UPPER" must be lowercase/],
  ['localhost:5000/a//b', /repository "a\/\/b"/],
  ['localhost:5000/a:bad/tag', /repository/],
  ['localhost:5000/a:-bad', /tag "-bad"/],
  [`localhost:5000/a:${'x'.repeat(129)}`, /tag/],
  ['localhost:5000/a@sha256:abc', /digest "sha256:abc"/],
  [`localhost:5000/a@sha256:${'A'.repeat(64)}`, /digest/],
  [`localhost:5000/a@md5:${HEX}`, /digest/],
  ['localhost:99999/a', /not a valid host/],
  ['local host/a', /whitespace/],
];
for (const [input, re] of bad) {
  test(`rejects ${JSON.stringify(input).slice(0, 40)} naming the bad part`, (t) => {
    const err = t.throws(() => parseReference(input), { instanceOf: RegfsError });
    t.is(err?.code, 'INVALID_REFERENCE');
    t.regex(err!.message, re);
    t.false(err!.message.includes('\n'));
  });
}

test('digest grammar is enforced before any path or URL is built', (t) => {
  for (const d of ['sha256:../../x', `sha256:${'A'.repeat(64)}`, 'sha256:' + 'a'.repeat(63), `sha1:${'a'.repeat(40)}`, `sha256:${HEX}\n`, 5, null]) {
    t.throws(() => parseDigest(d), { instanceOf: RegfsError });
  }
  t.is(parseDigest(`sha256:${HEX}`), `sha256:${HEX}`);
});

test('loopback hosts are recognised for plain HTTP; others are not', (t) => {
  for (const h of ['localhost', 'localhost:5000', '127.0.0.1:80', '127.9.8.7', '[::1]:5000']) t.true(isLoopbackHost(h), h);
  for (const h of ['example.com', '128.0.0.1:5000', 'localhost.evil.com', '10.0.0.1']) t.false(isLoopbackHost(h), h);
  t.is(parseRegistryHost('https://myreg.io/'), 'myreg.io');
  t.throws(() => parseRegistryHost('myreg.io/path'));
});
