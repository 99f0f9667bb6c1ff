// Preloaded into a regfs process under test (`node --import dist/lab/fault-inject.js bin/regfs ...`):
// once the file named by REGFS_LAB_FAULT_FILE exists, it raises a fault that no regfs handler catches,
// as a bug in a FUSE or control handler would: REGFS_LAB_FAULT_KIND=throw throws from a timer callback
// (an uncaught exception), =reject leaves a rejected promise unhandled. Product code never imports this.
import { existsSync } from 'node:fs';

const file = process.env.REGFS_LAB_FAULT_FILE;
const kind = process.env.REGFS_LAB_FAULT_KIND ?? 'throw';
if (file) {
  const poll = setInterval(() => {
    if (!existsSync(file)) return;
    clearInterval(poll);
    if (kind === 'reject') void Promise.reject(new Error('injected rejection (lab/fault-inject)'));
    else setTimeout(() => {
      throw new Error('injected exception (lab/fault-inject)');
    }, 0);
  }, 50);
  poll.unref();
}
