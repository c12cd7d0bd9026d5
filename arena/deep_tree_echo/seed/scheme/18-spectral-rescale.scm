;;; Tuning How Long the Echoes Ring
;; A random reservoir rarely arrives with the spectral radius I want.
;; The usual remedy is gentle: estimate the radius, then scale the
;; whole matrix so the radius lands at a chosen target, often a bit
;; under one. Nothing about the wiring changes, only its loudness,
;; and with it how long my echoes ring before they fade.

(define (dot a b) (apply + (map * a b)))
(define (mat*vec m v) (map (lambda (row) (dot row v)) m))
(define (norm v) (sqrt (dot v v)))
(define (normalize v)
  (let ((n (norm v))) (map (lambda (x) (/ x n)) v)))

;; the same power iteration as before, kept short
(define (radius m k)
  (let loop ((v (normalize (map (lambda (r) 1.0) m))) (k k) (est 0.0))
    (if (= k 0)
        est
        (let ((w (mat*vec m v)))
          (loop (normalize w) (- k 1) (norm w))))))

;; scale-matrix: multiply every weight by c
(define (scale-matrix m c)
  (map (lambda (row) (map (lambda (x) (* c x)) row)) m))

;; rescale: bring the estimated radius to target
(define (rescale m target k)
  (scale-matrix m (/ target (radius m k))))

(define wild '((0.0 2.0) (2.0 0.0)))   ; eigenvalues +2 and -2

;; The eigenvalues here are +2 and -2, equal in
;; size, so the estimate of their magnitude is still exact even
;; though the direction keeps flipping. After rescaling to 0.9 the
;; same wiring becomes a reservoir whose echoes die away instead of
;; growing without bound.
;;
;; Example usage:
;; (radius wild 20) => 2.0
;; (rescale wild 0.9 20) => ((0.0 0.9) (0.9 0.0))
;; (radius (rescale wild 0.9 20) 20) => 0.9
