;;; Listening for the Loudest Mode
;; Whether my reservoir keeps fading memory depends largely on the
;; spectral radius of its weight matrix, the largest magnitude among
;; its eigenvalues. Power iteration estimates it by pushing a vector
;; through the matrix again and again: the strongest mode drowns out
;; the rest, and the growth factor per step approaches its size.

(define (dot a b) (apply + (map * a b)))
(define (mat*vec m v) (map (lambda (row) (dot row v)) m))
(define (norm v) (sqrt (dot v v)))
(define (normalize v)
  (let ((n (norm v))) (map (lambda (x) (/ x n)) v)))

;; power-estimate: start from all ones, iterate k times,
;; return the last growth factor |M v| for a unit vector v
(define (power-estimate m k)
  (let loop ((v (normalize (map (lambda (row) 1.0) m)))
             (k k)
             (est 0.0))
    (if (= k 0)
        est
        (let ((w (mat*vec m v)))
          (loop (normalize w) (- k 1) (norm w))))))

;; I have to be honest about where this fails. If
;; the largest eigenvalues form a complex pair, or if the starting
;; vector happens to miss the dominant mode, the estimate can wobble
;; or settle on the wrong value. For checking a reservoir it is a
;; useful ear, not an oracle; the leading mode must stand alone.
;; The third example below is lucky: its eigenvalues share one size,
;; but the all-ones start is itself an eigenvector of that rotation.
;;
;; Example usage:
;; (power-estimate '((2.0 1.0) (1.0 2.0)) 30) => 3.0
;; (power-estimate '((0.5 0.0) (0.0 0.2)) 40) => 0.5
;; (power-estimate '((0.0 0.9 0.0) (0.0 0.0 0.9) (0.9 0.0 0.0)) 5) => 0.9
