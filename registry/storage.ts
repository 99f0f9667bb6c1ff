import type { TransportStats } from './http-client.js';
import type { Readable } from 'node:stream';
import type { Digest } from './digest.js';
import type { Descriptor } from './descriptor.js';
import type { Manifest } from './manifest.js';

/** ByteRange is a half-open byte range [start, end) of a blob; `end` omitted means to the end. */
export interface ByteRange {
  start: number;
  end?: number;
}

/** FetchedManifest is a manifest's exact bytes, its descriptor and its parsed form. */
export interface FetchedManifest {
  descriptor: Descriptor;
  bytes: Buffer;
  manifest: Manifest;
}

/** PushResult says whether a blob was uploaded, already present, or mounted from another repository. */
export type PushResult = 'pushed' | 'exists' | 'mounted';

/** BlobSource opens the bytes of a blob to upload; it may be called again when an upload is retried. */
export type BlobSource = () => Readable | Promise<Readable>;

/** ListOptions tune paginated listings. */
export interface ListOptions {
  /** pageSize is the `n` asked per page. */
  pageSize?: number;
  signal?: AbortSignal;
}

/**
 * ReadableRepository is one repository (or one OCI layout) that can be read: the interface the CLI's
 * pull, the mount and sync all use, whatever the backend.
 */
export interface ReadableRepository {
  /** name is the repository path, e.g. `samples/artifact`. */
  readonly name: string;
  /** display is how the repository is shown to a user, e.g. `localhost:5000/samples/artifact` or `oci:/x`. */
  readonly display: string;
  /** resolve turns a tag or digest into the manifest's descriptor. */
  resolve(reference: string, signal?: AbortSignal): Promise<Descriptor>;
  /** fetchManifest returns a verified, validated manifest by tag, digest or descriptor. */
  fetchManifest(reference: string | Descriptor, signal?: AbortSignal): Promise<FetchedManifest>;
  /**
   * fetchBlob streams a blob's bytes, or a range of them. The whole-blob stream fails with
   * DIGEST_MISMATCH/SIZE_MISMATCH at its end when the bytes do not match the descriptor; a range is not verified.
   */
  fetchBlob(desc: Descriptor, range?: ByteRange, signal?: AbortSignal): Promise<Readable>;
  /** blobExists tells whether the repository has the blob. */
  blobExists(desc: Descriptor): Promise<boolean>;
  /** statBlob returns a blob's descriptor (its size) by digest; NOT_FOUND when absent. */
  statBlob(digest: Digest): Promise<Descriptor>;
  /** listTags returns every tag, following pagination. */
  listTags(opts?: ListOptions): Promise<string[]>;
  /** referrers lists manifests whose subject is `subject`, optionally filtered by artifact type. */
  referrers(subject: Descriptor, artifactType?: string): Promise<Descriptor[]>;
}

/** Repository is a ReadableRepository that can also be written to. */
export interface Repository extends ReadableRepository {
  /** pushBlob uploads a blob unless it is already present; the bytes are verified against `desc`. */
  pushBlob(desc: Descriptor, source: BlobSource): Promise<PushResult>;
  /**
   * pushStream uploads bytes whose digest is not known yet, hashing them as they are sent (one read of
   * the source instead of hash-then-upload); it returns the sha256 digest and size the registry committed.
   * `size`, when given, is announced up front and a source of another length fails the upload.
   */
  pushStream(source: Readable, size?: number): Promise<{ digest: Digest; size: number }>;
  /** mountBlob asks the registry to link a blob from another repository; false when it could not. */
  mountBlob(desc: Descriptor, fromRepository: string): Promise<boolean>;
  /** pushManifest stores manifest bytes under its digest and under each tag. */
  pushManifest(bytes: Buffer, mediaType: string, tags: string[]): Promise<Descriptor>;
  /** tag points a tag at an existing manifest. */
  tag(desc: Descriptor, tag: string): Promise<void>;
  /** deleteManifest removes a manifest (by digest) and with it every tag on it. */
  deleteManifest(desc: Descriptor): Promise<void>;
  /** deleteBlob removes a blob. */
  deleteBlob(desc: Descriptor): Promise<void>;
}

/** Registry is a source of repositories: a remote registry, or a folder of OCI layouts. */
export interface Registry {
  /** display is how the registry is shown to a user. */
  readonly display: string;
  /** listRepositories returns every repository name, following pagination. */
  listRepositories(opts?: ListOptions): Promise<string[]>;
  /** repository opens one repository by name. */
  repository(name: string): Repository;
  /** close releases connections. */
  close(): Promise<void>;
  /** stats returns the transport's counters (requests, 429s, 503s, time waited), for a registry reached over HTTP. */
  stats?(): TransportStats;
}
