/** VERSION is the regfs release. */
export const VERSION = '0.1.0';
