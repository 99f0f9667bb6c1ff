import { CredentialStore, type CredentialProvider } from './credentials.js';
import type { TransportOptions } from './http-client.js';
import { OciLayoutStore } from './oci-layout-store.js';
import { parseRegistryHost, registryApiHost } from './reference.js';
import { RemoteRegistry } from './remote.js';
import type { Registry } from './storage.js';
import type { Logger } from '../util/log.js';

/** SourceOptions say how to reach a mount or sync source. */
export interface SourceOptions {
  plainHttp?: boolean;
  insecure?: boolean;
  caFile?: string;
  /** registryConfig is the docker-compatible credentials file (default $DOCKER_CONFIG/config.json). */
  registryConfig?: string;
  credentials?: CredentialProvider;
  log?: Logger;
  /** forMount gives every registry call a deadline well below the FUSE operation timeout, with few, quick retries. */
  forMount?: boolean;
  create?: boolean;
}

/** MOUNT_TRANSPORT is the transport tuning of a mount: 8 s deadlines, 2 retries within 10 s. */
export const MOUNT_TRANSPORT: Partial<TransportOptions> = { timeoutMs: 8000, retries: 2, retryBudgetMs: 10_000 };

/** openSource opens `oci:DIR` as a folder of OCI layouts, anything else as a registry host (Docker Hub's names talk to registry-1.docker.io). */
export function openSource(source: string, opts: SourceOptions = {}): Registry {
  if (source.startsWith('oci:')) return new OciLayoutStore(source.slice(4), { create: opts.create });
  return new RemoteRegistry(registryApiHost(parseRegistryHost(source)), {
    plainHttp: opts.plainHttp,
    insecure: opts.insecure,
    caFile: opts.caFile,
    credentials: opts.credentials ?? new CredentialStore(opts.registryConfig).provider(),
    log: opts.log,
    ...(opts.forMount ? MOUNT_TRANSPORT : {}),
  });
}
