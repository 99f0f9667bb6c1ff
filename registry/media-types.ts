/** Media types regfs reads and writes, with the ORAS conventions for artifacts. */
export const MediaType = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  empty: 'application/vnd.oci.empty.v1+json',
  ociLayerTar: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerTarGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  unknownArtifact: 'application/vnd.unknown.artifact.v1',
  unknownConfig: 'application/vnd.unknown.config.v1+json',
} as const;

/** Annotation keys regfs uses. */
export const Annotation = {
  title: 'org.opencontainers.image.title',
  created: 'org.opencontainers.image.created',
  unpack: 'io.deis.oras.content.unpack',
  digestAnnotation: 'io.deis.oras.content.digest',
} as const;

/** The empty JSON config `{}` of OCI 1.1 artifacts. */
export const EMPTY_CONFIG = {
  mediaType: MediaType.empty,
  digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a',
  size: 2,
  data: 'e30=',
} as const;

/** MANIFEST_MEDIA_TYPES are the manifest kinds regfs asks for and accepts. */
export const MANIFEST_MEDIA_TYPES: readonly string[] = [
  MediaType.ociManifest,
  MediaType.ociIndex,
  MediaType.dockerManifest,
  MediaType.dockerManifestList,
];

/** isIndexMediaType tells whether a manifest media type lists other manifests. */
export function isIndexMediaType(mt: string | undefined): boolean {
  return mt === MediaType.ociIndex || mt === MediaType.dockerManifestList;
}

/** MAX_MANIFEST_BYTES caps manifest and tag-list bodies, as distribution does. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
