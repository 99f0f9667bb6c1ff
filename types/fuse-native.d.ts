// Minimal typings for fuse-native 2.2.6 (the package ships none); only what mount/ uses.
declare module 'fuse-native' {
  interface FuseOptions {
    fsname?: string;
    subtype?: string;
    kernelCache?: boolean;
    autoCache?: boolean;
    attrTimeout?: number;
    entryTimeout?: number;
    maxRead?: number;
    allowOther?: boolean;
    defaultPermissions?: boolean;
    autoUnmount?: boolean;
    timeout?: number | false;
    force?: boolean;
    mkdir?: boolean;
    debug?: boolean;
    uid?: number;
    gid?: number;
  }
  class Fuse {
    constructor(mnt: string, ops: object, opts?: FuseOptions);
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    static unmount(mnt: string, cb: (err: Error | null) => void): void;
  }
  export default Fuse;
}
