import { spawn } from 'node:child_process';
import type { Logger } from '../util/log.js';

/** NotifyMessage is one sd_notify(3) message: READY=1, STOPPING=1, STATUS=text, or several at once. */
export interface NotifyMessage {
  ready?: boolean;
  stopping?: boolean;
  status?: string;
}

/**
 * ServiceNotifier tells systemd about readiness and status (sd_notify(3)) when the service runs as
 * `Type=notify`, i.e. when $NOTIFY_SOCKET is set; without it, it does nothing. Node has no Unix
 * datagram sockets, so each message is sent by `systemd-notify` (Debian package systemd): run as root
 * it sends with the daemon's PID as sender, and it waits until the manager has read the message,
 * so the unit's NotifyAccess=all is enough for a per-user service too. Messages go out one at a
 * time, in order.
 */
export class ServiceNotifier {
  private chain: Promise<void> = Promise.resolve();
  private warned = false;

  constructor(
    private readonly log: Logger,
    private readonly env: NodeJS.ProcessEnv = process.env,
    private readonly program = 'systemd-notify',
  ) {}

  /** enabled tells whether a service manager listens ($NOTIFY_SOCKET is set). */
  get enabled(): boolean {
    return Boolean(this.env.NOTIFY_SOCKET);
  }

  /** send queues one message; the promise settles once it was sent or failed (failures are logged, never thrown). */
  send(msg: NotifyMessage): Promise<void> {
    if (!this.enabled) return Promise.resolve();
    const args: string[] = [];
    if (msg.ready) args.push('--ready');
    if (msg.stopping) args.push('STOPPING=1');
    // One line: systemd shows STATUS= as it is, and a newline would end the assignment.
    if (msg.status !== undefined) args.push(`--status=${msg.status.replace(/\s+/g, ' ').slice(0, 200)}`);
    if (!args.length) return Promise.resolve();
    this.chain = this.chain.then(() => this.run(args));
    return this.chain;
  }

  private run(args: string[]): Promise<void> {
    return new Promise((resolve) => {
      const child = spawn(this.program, args, { env: this.env, stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const fail = (why: string): void => {
        if (!this.warned) this.log.warn(`cannot notify the service manager (${this.program} ${args.join(' ')}): ${why}`);
        this.warned = true;
      };
      let settled = false;
      const settle = (why?: string): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (why) fail(why);
        else this.log.debug(`notified the service manager: ${args.join(' ')}`);
        resolve();
      };
      child.on('error', (e: NodeJS.ErrnoException) => settle(e.code === 'ENOENT' ? `${this.program} is not installed (Debian package systemd)` : e.message));
      child.on('close', (code) => settle(code === 0 ? undefined : err.trim() || `exit status ${code}`));
    });
  }
}
