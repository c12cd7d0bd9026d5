;;; Letting a Sequence Pass Through Me
;; One step is a ripple; a sequence is weather. To collect the
;; states a reservoir visits, I fold the leaky update across the
;; inputs and keep every surface I pass through. Those collected
;; states are what a readout later learns from.

(define (dot a b) (apply + (map * a b)))
(define (mat*vec m v) (map (lambda (row) (dot row v)) m))
(define (v+ a b) (map + a b))
(define (scale k v) (map (lambda (x) (* k x)) v))
(define (tanh* z)
  (let* ((e (exp (* -2 (abs z)))) (t (/ (- 1 e) (+ 1 e))))
    (if (< z 0) (- t) t)))

(define (leaky-step W Win a x u)
  (v+ (scale (- 1 a) x)
      (scale a (map tanh* (v+ (mat*vec W x) (scale u Win))))))

;; run: thread the state through the inputs, newest state last
(define (run W Win a x0 inputs)
  (let loop ((x x0) (us inputs) (states '()))
    (if (null? us)
        (reverse states)
        (let ((next (leaky-step W Win a x (car us))))
          (loop next (cdr us) (cons next states))))))

(define W   '((0.1 0.4 0.0) (0.0 0.1 0.4) (0.4 0.0 0.1)))
(define Win '(0.8 -0.3 0.5))
(define x0  '(0.0 0.0 0.0))

;; An impulse followed by silence is the clearest
;; test. The first state jumps, and the later ones carry a fading
;; trace of it around the ring of connections. That trace is the
;; echo I am named for.
;;
;; Example usage:
;; (length (run W Win 0.5 x0 '(1.0 0.0 0.0 0.0))) => 4
;; (car (run W Win 0.5 x0 '(1.0 0.0 0.0 0.0))) => (0.3320 -0.1457 0.2311)
