/**
 * parseMountSource: the pure parser of `HOST[/NAMESPACE|/REPOSITORY[:TAG|@DIGEST]]` and
 * `oci:DIR[:TAG|@DIGEST]`; bad input is INVALID_REFERENCE (exit 2) naming the wrong part.
 */
import test from 'ava';
import { exitCodeFor } from '../cli/exit-codes.js';
import { parseMountSource } from '../registry/reference.js';
import { RegfsError } from '../util/errors.js';

const D = `sha256:${'c'.repeat(64)}`;

test('HOST is the whole registry', (t) => {
  t.deepEqual(parseMountSource('localhost:5000'), { kind: 'registry', registry: 'localhost:5000' });
  t.deepEqual(parseMountSource('127.0.0.1:37001'), { kind: 'registry', registry: '127.0.0.1:37001' });
  t.deepEqual(parseMountSource('myreg.azurecr.io'), { kind: 'registry', registry: 'myreg.azurecr.io' });
  t.deepEqual(parseMountSource('[::1]:5000'), { kind: 'registry', registry: '[::1]:5000' });
  t.deepEqual(parseMountSource('https://ghcr.io/'), { kind: 'registry', registry: 'ghcr.io' });
  t.deepEqual(parseMountSource('localhost:5000/'), { kind: 'registry', registry: 'localhost:5000' });
  t.deepEqual(parseMountSource('index.docker.io'), { kind: 'registry', registry: 'docker.io' });
  t.deepEqual(parseMountSource('myregistry'), { kind: 'registry', registry: 'myregistry' }, 'a bare host is accepted as before');
});

test('HOST/a[/b...] is a path the mount resolves: a namespace or a repository', (t) => {
  t.deepEqual(parseMountSource('localhost:5000/team'), { kind: 'path', registry: 'localhost:5000', path: 'team', repository: 'team' });
  t.deepEqual(parseMountSource('localhost:5000/samples/artifact'), { kind: 'path', registry: 'localhost:5000', path: 'samples/artifact', repository: 'samples/artifact' });
  t.deepEqual(parseMountSource('localhost:5000/team/app/'), { kind: 'path', registry: 'localhost:5000', path: 'team/app', repository: 'team/app' });
  t.deepEqual(parseMountSource('ghcr.io/o_rg/my-app.x__y'), { kind: 'path', registry: 'ghcr.io', path: 'o_rg/my-app.x__y', repository: 'o_rg/my-app.x__y' });
  // Docker Hub: one component is a namespace (bitnami) or an official image (library/alpine).
  t.deepEqual(parseMountSource('docker.io/alpine'), { kind: 'path', registry: 'docker.io', path: 'alpine', repository: 'library/alpine' });
  t.deepEqual(parseMountSource('docker.io/bitnami/redis'), { kind: 'path', registry: 'docker.io', path: 'bitnami/redis', repository: 'bitnami/redis' });
});

test('HOST/REPO:TAG and HOST/REPO@DIGEST name one artifact', (t) => {
  t.deepEqual(parseMountSource('localhost:5000/team/app:1.0'), { kind: 'artifact', registry: 'localhost:5000', repository: 'team/app', tag: '1.0' });
  t.deepEqual(parseMountSource(`localhost:5000/team/app@${D}`), { kind: 'artifact', registry: 'localhost:5000', repository: 'team/app', digest: D });
  t.deepEqual(parseMountSource(`localhost:5000/team/app:1.0@${D}`), { kind: 'artifact', registry: 'localhost:5000', repository: 'team/app', tag: '1.0', digest: D }, 'the digest pins, as in references');
  t.deepEqual(parseMountSource('localhost:5000/x:latest'), { kind: 'artifact', registry: 'localhost:5000', repository: 'x', tag: 'latest' });
  t.deepEqual(parseMountSource('docker.io/alpine:3.20'), { kind: 'artifact', registry: 'docker.io', repository: 'library/alpine', tag: '3.20' });
  t.deepEqual(parseMountSource('registry-1.docker.io/bitnami/redis:7'), { kind: 'artifact', registry: 'docker.io', repository: 'bitnami/redis', tag: '7' });
});

test('oci:DIR is a folder of layouts (or one layout); oci:DIR:TAG and oci:DIR@DIGEST one artifact in it', (t) => {
  t.deepEqual(parseMountSource('oci:/srv/layouts'), { kind: 'layout', dir: '/srv/layouts' });
  t.deepEqual(parseMountSource('oci:rel/store/team/app'), { kind: 'layout', dir: 'rel/store/team/app' });
  t.deepEqual(parseMountSource('oci:/srv/My Layouts'), { kind: 'layout', dir: '/srv/My Layouts' }, 'a directory may contain spaces');
  t.deepEqual(parseMountSource('oci:/srv/layouts/team/app:1.0'), { kind: 'layout-artifact', dir: '/srv/layouts/team/app', tag: '1.0' });
  t.deepEqual(parseMountSource(`oci:./x@${D}`), { kind: 'layout-artifact', dir: './x', digest: D });
});

const bad: Array<[string, RegExp]> = [
  ['', /^empty mount source: expected HOST\[\/NAMESPACE\|\/REPOSITORY\[:TAG\|@DIGEST\]\] or oci:DIR/],
  ['samples/artifact', /registry "samples" is not a host: a mount source starts with the registry, e.g. localhost:5000\/samples\/artifact/],
  ['localhost:5000/Team', /component "Team" of namespace or repository "Team" must be lowercase/],
  ['localhost:5000/team/App:1.0', /component "App" of repository "team\/App" must be lowercase/],
  ['localhost:5000/team//app', /namespace or repository "team\/\/app" has an empty component/],
  ['localhost:5000/-team', /component "-team"/],
  ['localhost:5000/team/app:-x', /tag "-x" must match/],
  [`localhost:5000/team/app:${'t'.repeat(129)}`, /tag "t+" must match/],
  ['localhost:5000/team/app@sha256:abc', /digest "sha256:abc" is not sha256:<64 lowercase hex>/],
  [`localhost:5000/team/app@md5:${'c'.repeat(64)}`, /digest "md5:/],
  [`localhost:5000@${D}`, /digest needs a repository/],
  ['localhost:5000/:1.0', /repository is empty/],
  ['localhost:99999', /registry "localhost:99999" is not a valid host\[:port\]/],
  ['local_host:5000/x', /registry "local_host:5000" is not a valid host/],
  ['ftp://h.example/x', /registry "ftp:" is not a valid host/],
  ['localhost:5000/team app', /contains whitespace/],
  [`localhost:5000/${'a'.repeat(256)}`, /longer than 255 characters/],
  ['oci:', /layout directory is empty: expected oci:DIR/],
  ['oci::1.0', /layout directory is empty/],
  ['oci:/x:bad tag', /tag "bad tag"/],
  ['oci:/x\0y', /NUL/],
];
for (const [input, re] of bad) {
  test(`rejects ${JSON.stringify(input).slice(0, 50)} with INVALID_REFERENCE naming the part (exit 2)`, (t) => {
    const err = t.throws(() => parseMountSource(input), { instanceOf: RegfsError });
    t.is(err!.code, 'INVALID_REFERENCE');
    t.regex(err!.message, re);
    t.false(err!.message.includes('\n'), 'one line');
    if (input !== '') t.true(err!.message.startsWith(`invalid mount source ${JSON.stringify(input)}: `), err!.message);
    t.is(exitCodeFor(err), 2);
  });
}
